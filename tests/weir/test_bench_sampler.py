"""``weir bench --profile``: what the sampler counts of the Kafka requests a process sends."""

from __future__ import annotations

import uuid

import pytest

from weir.bench_sampler import Sampler
from weir.core.kafka import KafkaConnection
from weir.topics.admin import TopicAdmin
from weir.topics.names import TopicSpec

pytestmark = pytest.mark.kafka


async def test_the_sampler_counts_requests_batches_records_and_bytes_sent(kafka):
    topic = f"sampled-{uuid.uuid4().hex[:6]}.out"
    async with TopicAdmin(kafka) as admin:
        await admin.ensure([TopicSpec(topic, 1, 1)])
    producer = KafkaConnection.of(kafka).producer()
    await producer.start()
    sampler = Sampler()
    try:
        await producer.send_and_wait(topic, b"before", key=b"k")  # not counted
        sampler.start()
        batch = producer.create_batch()
        for _ in range(3):
            assert batch.append(key=b"k", value=b"x" * 100, timestamp=None) is not None
        batch.close()
        await (await producer.send_batch(batch, topic, partition=0))
        await producer.send_and_wait(topic, b"y" * 100, key=b"k", partition=0)
    finally:
        sampler.stop()
        await producer.stop()
    batches, records, size = sampler.produced["out"]
    assert (batches, records) == (2, 4)
    assert 400 < size < 1000  # 4 values of 100 bytes, batch and record headers
    assert sampler.kafka_requests["ProduceRequest"] == 2
    assert "Kafka requests sent: ProduceRequest 2" in sampler.report()
