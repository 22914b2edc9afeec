"""The data path's producer seam: aiokafka and confluent-kafka behind one ``DataProducer``."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.errors import MessageSizeTooLargeError

from tests._kafka import read_topic
from tests._sink import free_port
from weir.core.config import WeirSettings, load_settings
from weir.core.errors import BrokerError
from weir.core.kafka import DataProducer, KafkaConnection
from weir.topics._aiokafka import KeyPartitioner
from weir.topics._broker_security import BrokerSecurity
from weir.topics.admin import TopicAdmin
from weir.topics.names import TopicSpec

CLIENTS = ["aiokafka", "confluent"]


def _producer(settings: WeirSettings, client: str, **own: int) -> DataProducer:
    kafka = KafkaConnection.of(settings.model_copy(update={"kafka_client": client}))
    options = {"linger_ms": 0, "batch_bytes": 524_288} | own
    return kafka.data_producer(client_id=f"test-{client}", partitioner=KeyPartitioner(), **options)


async def _topic(settings: WeirSettings, partitions: int) -> str:
    name = f"seam-{uuid.uuid4().hex[:8]}"
    async with TopicAdmin(settings) as admin:
        await admin.ensure([TopicSpec(name, partitions, None)])
    return name


async def test_both_clients_put_every_key_on_the_partition_weir_computes(kafka) -> None:
    topic = await _topic(kafka, 7)
    keys = [f"request-{i}".encode() for i in range(300)]
    placed: dict[str, list[int]] = {}
    for client in CLIENTS:
        producer = _producer(kafka, client)
        await producer.start()
        try:
            futures = [await producer.send(topic, value=b"v", key=key) for key in keys]
            placed[client] = [(await f).partition for f in futures]
        finally:
            await producer.stop()
    expected = [KeyPartitioner()(key, list(range(7)), list(range(7))) for key in keys]
    assert placed["aiokafka"] == expected
    assert placed["confluent"] == expected
    assert len(set(expected)) == 7  # the keys spread: the comparison means something


async def test_confluent_acks_say_where_each_message_is_and_it_arrives_whole(kafka) -> None:
    topic = await _topic(kafka, kafka.partitions)
    producer = _producer(kafka, "confluent")
    await producer.start()
    try:
        sent = []
        for i in range(2000):
            partition = 2 if i % 10 == 0 else None  # explicit partitions (changelogs) too
            future = await producer.send(
                topic,
                value=f"value-{i}".encode(),
                key=f"k{i % 50}".encode(),
                headers=[("n", str(i).encode())],
                partition=partition,
            )
            sent.append((i, partition, future))
        await producer.flush()
        assert all(f.done() for _, _, f in sent)  # flush waited for every ack
        acks = {i: f.result() for i, _, f in sent}
    finally:
        await producer.stop()
    records = await read_topic(kafka, topic, until=2000)
    assert len(records) == 2000
    by_number = {int(dict(r.headers)["n"]): r for r in records}
    for i, partition, _ in sent:
        record, ack = by_number[i], acks[i]
        assert record.value == f"value-{i}".encode()
        assert record.key == f"k{i % 50}".encode()
        assert (ack.topic, ack.partition, ack.offset) == (topic, record.partition, record.offset)
        if partition is not None:
            assert record.partition == partition


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_message_over_the_limit_fails_as_too_large_on_both(kafka, client) -> None:
    topic = await _topic(kafka, 1)
    producer = _producer(kafka, client)
    await producer.start()
    try:
        with pytest.raises(MessageSizeTooLargeError):
            future = await producer.send(topic, value=b"x" * 2_000_000, key=b"k")
            await future
        # The producer goes on: the next message is acknowledged.
        ack = await (await producer.send(topic, value=b"small", key=b"k"))
        assert ack.offset >= 0
    finally:
        await producer.stop()


async def test_confluent_start_without_a_broker_is_a_broker_error() -> None:
    settings = load_settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", kafka_client="confluent")
    producer = KafkaConnection.of(settings).data_producer(
        client_id="nobody", linger_ms=0, batch_bytes=16_384, request_timeout_ms=2_000
    )
    with pytest.raises(BrokerError, match=r"cannot connect to Kafka at 127\.0\.0\.1"):
        await producer.start()


async def test_confluent_stop_waits_for_every_ack(kafka) -> None:
    topic = await _topic(kafka, kafka.partitions)
    producer = _producer(kafka, "confluent", linger_ms=50)
    await producer.start()
    futures = [await producer.send(topic, value=b"v", key=str(i).encode()) for i in range(500)]
    await producer.stop()
    assert all(f.done() and f.exception() is None for f in futures)
    assert len(await read_topic(kafka, topic, until=500)) == 500


async def test_confluent_learns_partitions_without_blocking_the_loop(kafka) -> None:
    topic = await _topic(kafka, 5)
    producer = _producer(kafka, "confluent")
    await producer.start()
    try:
        assert producer.partitions_for(topic) is None  # asked for; looked up off the loop
        async with asyncio.timeout(10):
            while producer.partitions_for(topic) is None:
                await asyncio.sleep(0.02)
        assert producer.partitions_for(topic) == [0, 1, 2, 3, 4]
    finally:
        await producer.stop()


def test_librdkafka_gets_the_same_security_and_no_repr_shows_a_secret(
    monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("WEIR_TEST_KAFKA_PW", "s3cret-scram-password")
    authority = BrokerSecurity(tmp_path / "ca")
    authority.ensure()
    ca = authority.ca_file
    settings = load_settings(
        kafka_bootstrap="broker-1:9096",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc-weir",
        kafka_sasl_password="env:WEIR_TEST_KAFKA_PW",
        kafka_ssl_cafile=ca,
        kafka_ssl_check_hostname=False,
        kafka_client="confluent",
    )
    kafka = KafkaConnection.of(settings, bootstrap="broker-1:9096")
    options = kafka.rdkafka_options()
    assert options["security.protocol"] == "sasl_ssl"
    assert options["sasl.mechanism"] == "SCRAM-SHA-512"
    assert options["sasl.username"] == "svc-weir"
    assert options["sasl.password"] == "s3cret-scram-password"
    assert options["ssl.ca.location"] == str(ca)
    assert options["ssl.endpoint.identification.algorithm"] == "none"
    producer = kafka.data_producer(client_id="w", linger_ms=0, batch_bytes=16_384)
    assert "s3cret" not in repr(producer) + repr(kafka)
    system = load_settings(
        kafka_bootstrap="b:9093", kafka_security_protocol="SSL", kafka_client="confluent"
    )
    assert KafkaConnection.of(system).rdkafka_options()["ssl.ca.location"] == "probe"


class _Message:
    """What ``send_batches`` takes (``Outgoing``), without the outbox's extras."""

    def __init__(self, topic: str, i: int, partition: int | None = None, size: int = 0) -> None:
        self.topic = topic
        self.key: bytes | None = f"k{i % 37}".encode()
        self.value: bytes | None = (b"x" * size) if size else f"value-{i}".encode()
        self.headers: list[tuple[str, bytes]] | None = [("n", str(i).encode())]
        self.partition = partition


@pytest.mark.parametrize("client", CLIENTS)
async def test_send_batches_keeps_order_per_partition_and_says_where_each_message_is(
    kafka, client
) -> None:
    count = kafka.partitions
    assert count >= 3
    topic = await _topic(kafka, count)
    # Small batches, so a partition's messages fill several.
    producer = _producer(kafka, client, batch_bytes=16_384)
    await producer.start()
    try:
        messages = [
            _Message(topic, i, partition=2 if i % 7 == 0 else None, size=900 if i % 5 else 0)
            for i in range(600)
        ]
        messages.insert(100, _Message(topic, 600, size=2_000_000))  # refused, alone
        batches = await producer.send_batches(messages)
        where: dict[int, tuple[int, int]] = {}
        for ack, members in batches:
            if 100 in members:
                assert members == [100]
                with pytest.raises(MessageSizeTooLargeError):
                    await ack
                continue
            first = await ack
            for n, i in enumerate(members):
                where[i] = (first.partition, first.offset + n)
    finally:
        await producer.stop()
    assert client == "confluent" or len(batches) < 100  # aiokafka: a batch per partition's fill
    records = await read_topic(kafka, topic, until=600)
    assert len(records) == 600
    for record in records:
        i = int(dict(record.headers)["n"])
        position = messages.index(
            next(m for m in messages if m.headers == [("n", str(i).encode())])
        )
        assert where[position] == (record.partition, record.offset)
        assert record.key == messages[position].key and record.value == messages[position].value
        expected = messages[position].partition
        if expected is None:
            expected = KeyPartitioner()(record.key, list(range(count)), list(range(count)))
        assert record.partition == expected
    # Within each partition, the records are in the order they were given.
    for partition in range(count):
        order = [int(dict(r.headers)["n"]) for r in records if r.partition == partition]
        offsets = [r.offset for r in records if r.partition == partition]
        assert order == sorted(order) and offsets == sorted(offsets)


async def test_confluent_replaces_a_producer_a_fatal_error_left_unusable(kafka, caplog) -> None:
    import confluent_kafka
    from aiokafka.errors import KafkaError

    topic = await _topic(kafka, kafka.partitions)
    producer = _producer(kafka, "confluent")
    await producer.start()

    async def send_until_acked(value: bytes) -> None:
        # What the outbox does: a send that fails goes again after a pause.
        while True:
            try:
                await (await producer.send(topic, value=value, key=value))
                return
            except KafkaError:
                await asyncio.sleep(0.05)

    try:
        first = producer._producer  # type: ignore[attr-defined]
        for i in range(50):
            await send_until_acked(f"before-{i}".encode())
        # librdkafka reports a fatal error from its own thread (none can be provoked on a
        # healthy broker): the producer is unusable from then on.
        fatal = confluent_kafka.KafkaError(
            confluent_kafka.KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "sequence refused", fatal=True
        )
        await asyncio.to_thread(producer._on_error, fatal)  # type: ignore[attr-defined]
        async with asyncio.timeout(30):
            for i in range(50):
                await send_until_acked(f"after-{i}".encode())
            while producer._producer is first:  # type: ignore[attr-defined]
                await asyncio.sleep(0.05)
    finally:
        await producer.stop()
    assert "fatal: sequence refused; replacing the producer" in caplog.text
    values = {r.value for r in await read_topic(kafka, topic, until=100)}
    assert values == {f"{w}-{i}".encode() for w in ("before", "after") for i in range(50)}
