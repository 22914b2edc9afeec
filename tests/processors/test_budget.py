"""The cost ledger: starting, and cost events that must reach the topic."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from decimal import Decimal
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from weir.core import kafka as kafka_module
from weir.core.config import WeirSettings, load_settings
from weir.core.errors import BrokerError
from weir.core.kafka import KafkaConnection
from weir.processors.budget import CostLedger, Reservation
from weir.schemas.messages import now_ms
from weir.topics._aiokafka import stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import COSTS_TOPIC


def nowhere() -> WeirSettings:
    with socket.socket() as sock:  # a port nobody listens on: no broker there
        sock.bind(("127.0.0.1", 0))
        return load_settings(kafka_bootstrap=f"127.0.0.1:{sock.getsockname()[1]}")


async def test_a_ledger_that_failed_to_start_tries_again_on_the_next_call():
    ledger = CostLedger(nowhere())
    with pytest.raises(BrokerError) as first:
        await ledger.start()
    with pytest.raises(BrokerError) as second:
        await ledger.start()
    assert second.value is not first.value  # a new attempt, not the first failure replayed


async def cost_events(settings: WeirSettings, key: str, since_ms: int) -> list[dict[str, Any]]:
    """Cost events of ``key`` on the topic since ``since_ms``, read by an independent consumer."""
    async with TopicAdmin(settings) as admin:
        count = (await admin.partitions([COSTS_TOPIC]))[COSTS_TOPIC]
    consumer = KafkaConnection.of(settings).consumer()
    await consumer.start()
    try:
        tps = [TopicPartition(COSTS_TOPIC, p) for p in range(count)]
        consumer.assign(tps)
        found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        for tp in tps:
            if found.get(tp) is None:
                await consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, found[tp].offset)
        end = await consumer.end_offsets(tps)
        events = []
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                events += [json.loads(r.value) for r in records if r.key == key.encode()]
        # Cost events only: claims and releases of the same key are there too.
        events = [e for e in events if "type" not in e]
        return events
    finally:
        await stop_consumer(consumer)


@pytest.mark.kafka
async def test_spend_returns_once_its_event_is_on_the_topic_even_after_a_broker_error(
    kafka, pipeline_name
):
    since = now_ms()
    ledger = CostLedger(kafka)
    await ledger.start()
    try:
        producer = ledger._producer
        assert producer is not None
        real_send = producer.send_and_wait
        failures = []

        async def flaky_send(*args: Any, **kwargs: Any) -> Any:
            if not failures:
                failures.append(1)
                raise KafkaConnectionError("broker went away")
            return await real_send(*args, **kwargs)

        producer.send_and_wait = flaky_send  # type: ignore[method-assign]
        key = f"{pipeline_name}/-"
        claim = await ledger.reserve(key, "day", Decimal(10), Decimal("0.5"))
        assert claim is not None
        reservation = Reservation(ledger, key, Decimal("0.5"), claim=claim)
        await reservation.spend(Decimal("0.25"))
        assert failures == [1]
        # Already acknowledged: an independent reader finds it at once.
        events = await cost_events(kafka, key, since)
        assert [Decimal(e["cost_usd"]) for e in events] == [Decimal("0.25")]
    finally:
        await ledger.stop()


@pytest.mark.kafka
async def test_a_failed_start_leaves_no_client_running(kafka, monkeypatch):
    made: list[AIOKafkaProducer] = []

    class Recorded(AIOKafkaProducer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise KafkaConnectionError("lost the broker while catching up")

    # Every producer is built by the connection factory.
    monkeypatch.setattr(kafka_module, "AIOKafkaProducer", Recorded)
    monkeypatch.setattr(AIOKafkaConsumer, "offsets_for_times", refuse)
    ledger = CostLedger(kafka)
    with pytest.raises(KafkaConnectionError):
        await ledger.start()
    [producer] = made
    assert producer._closed is True  # stopped, not leaked
    monkeypatch.undo()
    started = time.monotonic()
    await asyncio.wait_for(ledger.start(), 60)  # and the next start succeeds
    assert ledger._task is not None and time.monotonic() - started < 60
    await ledger.stop()


@pytest.mark.kafka
async def test_a_flood_of_budget_keys_stays_under_the_cap_and_an_evicted_key_cannot_overspend(
    kafka, pipeline_name, caplog
):
    settings = kafka.model_copy(update={"budget_max_keys": 50, "cost_events_seen_max": 200})
    ledger = CostLedger(settings)
    await ledger.start()
    try:
        limit = Decimal("1.00")
        spender = f"{pipeline_name}/spender"
        claim = await ledger.reserve(spender, "day", limit, limit)
        assert claim is not None
        await Reservation(ledger, spender, limit, claim=claim).spend(limit)
        assert ledger.spent(spender, "day") == limit
        most = 0
        for i in range(600):  # tenants made up by requests, one cent each
            key = f"{pipeline_name}/flood-{i}"
            claim = await ledger.reserve(key, "day", limit, Decimal("0.01"))
            assert claim is not None
            reservation = Reservation(ledger, key, Decimal("0.01"), claim=claim)
            await reservation.spend(Decimal("0.01"))
            reservation.release()
            most = max(most, ledger.keys_in_memory)
        assert most <= 50
        assert ledger.evicted_keys >= 600 + 1 - 50
        assert any("budget_max_keys" in r.getMessage() for r in caplog.records)
        assert ledger.event_ids_remembered <= 200
        # The spender was evicted long ago; its spend is still at least its limit.
        assert ledger.spent(spender, "day") >= limit
        assert ledger.status(spender, "day", limit).exceeded
        assert not await ledger.reserve(spender, "day", limit, Decimal("0.01"), wait_s=0)
        # A key that never spent is not refused because of the others.
        fresh = f"{pipeline_name}/fresh"
        assert ledger.spent(fresh, "day") < Decimal("0.5")
        assert await ledger.reserve(fresh, "day", limit, Decimal("0.01"))
    finally:
        await ledger.stop()
