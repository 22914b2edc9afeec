"""The exactly-once chain ``weir bench --chain-txn`` compares weir against."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid

import pytest
from aiokafka import TopicPartition

from weir.bench_measures import spawn
from weir.bench_systems import PARTITIONS, chain_topics
from weir.core.kafka import KafkaConnection
from weir.topics.admin import TopicAdmin
from weir.topics.names import TopicSpec

pytestmark = pytest.mark.kafka


async def test_the_exactly_once_chain_answers_each_request_once_with_its_offsets(kafka):
    prefix = f"bench-chain-txn-{uuid.uuid4().hex[:6]}"
    topics = chain_topics(prefix)
    async with TopicAdmin(kafka) as admin:
        await admin.ensure(TopicSpec(t, PARTITIONS, 1) for t in topics)
    child = await spawn("chain-txn", prefix, kafka.bootstrap_servers)
    connection = KafkaConnection.of(kafka)
    reader = connection.consumer(
        topics[-1], auto_offset_reset="earliest", isolation_level="read_committed"
    )
    producer = connection.producer(acks="all")
    await producer.start()
    await reader.start()
    try:
        keys = [f"r{i}".encode() for i in range(120)]
        for key in keys:
            await producer.send(topics[0], json.dumps({"n": 0}).encode(), key=key)
        await producer.flush()
        got: dict[bytes, list[int]] = {}
        async with asyncio.timeout(60):
            while sum(len(v) for v in got.values()) < len(keys):
                for records in (await reader.getmany(timeout_ms=500)).values():
                    for r in records:
                        got.setdefault(r.key, []).append(json.loads(r.value)["n"])
        assert got == {key: [3] for key in keys}
        # The last hop's input offsets were committed in its transactions, nothing left over.
        admin_consumer = connection.consumer(group_id=f"{prefix}.chain")
        await admin_consumer.start()
        try:
            last = [TopicPartition(topics[-2], p) for p in range(PARTITIONS)]
            ends = await admin_consumer.end_offsets(last)
            committed = {tp: await admin_consumer.committed(tp) for tp in last}
            assert committed == ends
        finally:
            await admin_consumer.stop()
    finally:
        await reader.stop()
        await producer.stop()
        child.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(child.wait(), 30) == 0
