"""The outbox's ordering promises, on a real broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from weir.core.config import WeirSettings
from weir.core.kafka import KafkaConnection
from weir.streams.outbox import Outbox, OutMessage
from weir.topics.admin import TopicAdmin
from weir.topics.names import TopicSpec

pytestmark = pytest.mark.kafka


async def _count(settings: WeirSettings, topic: str) -> int:
    consumer = KafkaConnection.of(settings).consumer()
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def test_a_message_marked_after_waits_for_the_rest_of_its_send_to_be_acknowledged(
    kafka, pipeline_name
):
    outputs, marker = f"{pipeline_name}.outputs", f"{pipeline_name}.marker"
    async with TopicAdmin(kafka) as admin:  # the outputs' topic does not exist yet
        await admin.ensure([TopicSpec(marker, 1, 1, keyed=False)])
    producer = KafkaConnection.of(kafka).data_producer(
        client_id="test-outbox", linger_ms=0, batch_bytes=16_384, request_timeout_ms=2000
    )
    await producer.start()
    outbox = Outbox(max_backoff_s=0.5)
    outbox.attach(producer)
    try:
        sending = asyncio.create_task(
            outbox.send_all(
                [
                    OutMessage(marker, b"r1", b"done", partition=0, after=True),
                    OutMessage(outputs, b"r1", b"output", partition=0),
                ],
                owned=lambda: True,
            )
        )
        await asyncio.sleep(5)  # the output cannot be written: the marker must not be either
        assert not sending.done()
        assert await _count(kafka, marker) == 0
        async with TopicAdmin(kafka) as admin:
            await admin.ensure([TopicSpec(outputs, 1, 1, keyed=False)])
        async with asyncio.timeout(60):
            await sending
        assert await _count(kafka, outputs) == 1
        assert await _count(kafka, marker) == 1
    finally:
        await producer.stop()
