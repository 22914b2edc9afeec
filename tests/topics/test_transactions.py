"""What the answers writer relies on in aiokafka's transactions (``weir.topics._aiokafka``)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import ProducerFenced

from tests._kafka import read_topic
from weir.core.kafka import KafkaConnection
from weir.topics._aiokafka import add_to_transaction, left_transaction
from weir.topics.admin import TopicAdmin
from weir.topics.names import TopicSpec

pytestmark = pytest.mark.kafka


async def _topic(kafka) -> str:
    name = f"txn-{uuid.uuid4().hex[:8]}"
    async with TopicAdmin(kafka) as admin:
        await admin.ensure([TopicSpec(name, kafka.partitions, 1)])
    return name


def _producer(kafka, tid: str):
    return KafkaConnection.of(kafka).producer(
        transactional_id=tid, enable_idempotence=True, acks="all", linger_ms=0
    )


async def test_partitions_registered_ahead_are_in_the_transaction_before_anything_is_sent(kafka):
    topic = await _topic(kafka)
    tp = TopicPartition(topic, 0)
    producer = _producer(kafka, f"ahead-{uuid.uuid4().hex}")
    await producer.start()
    try:
        await producer.begin_transaction()
        add_to_transaction(producer, [tp])
        async with asyncio.timeout(10):
            while tp not in producer._txn_manager.txn_partitions:
                await asyncio.sleep(0.005)
        assert left_transaction(producer) is None
        await producer.send_and_wait(topic, b"answer", key=b"k", partition=0)
        await producer.commit_transaction()
    finally:
        await producer.stop()
    records = await read_topic(kafka, topic, until=1)  # read_committed
    assert [r.value for r in records] == [b"answer"]


async def test_a_producer_fenced_while_registering_ahead_says_it_left_the_transaction(kafka):
    topic = await _topic(kafka)
    tid = f"fenced-{uuid.uuid4().hex}"
    producer = _producer(kafka, tid)
    await producer.start()
    try:
        await producer.begin_transaction()
        intruder = _producer(kafka, tid)
        await intruder.start()
        await intruder.stop()
        add_to_transaction(producer, [TopicPartition(topic, 0)])
        async with asyncio.timeout(10):
            while left_transaction(producer) is None:
                await asyncio.sleep(0.005)
        assert isinstance(left_transaction(producer), ProducerFenced)
    finally:
        await producer.stop()
