"""The local broker: a real Kafka JVM, started once for this module on a free port."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import NewTopic

from weir.core.config import BrokerSettings, WeirSettings
from weir.core.errors import BrokerError
from weir.core.kafka import KafkaConnection
from weir.topics.broker import LocalBroker, free_port_pair


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _settings(port: int) -> WeirSettings:
    return WeirSettings(broker=BrokerSettings(port=port, start_timeout_s=120))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    local = LocalBroker(_settings(free_port_pair()), state_dir=tmp_path_factory.mktemp("broker"))
    local.start()
    yield local
    local.stop()


async def _create_topic(bootstrap: str, name: str) -> None:
    admin = KafkaConnection(bootstrap=bootstrap).admin()
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = KafkaConnection(bootstrap=bootstrap).producer(acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = KafkaConnection(bootstrap=bootstrap).consumer(
        topic, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 20.0
        while len(values) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            values += [msg.value for msgs in batches.values() for msg in msgs if msg.value]
    finally:
        await consumer.stop()
    return values


@pytest.mark.kafka
def test_started_broker_reports_running(broker: LocalBroker) -> None:
    status = broker.status()
    assert status.running
    assert status.pid is not None
    assert status.bootstrap == f"127.0.0.1:{broker.port}"
    assert status.version == "4.1.1"
    assert (status.data_dir / "meta.properties").is_file()
    assert status.log_file.is_file()
    assert "Kafka Server started" in status.log_file.read_text()


@pytest.mark.kafka
def test_start_when_running_returns_the_same_broker(broker: LocalBroker) -> None:
    before = broker.status()
    again = LocalBroker(_settings(broker.port), state_dir=broker.state_dir).start()
    assert again.running
    assert again.pid == before.pid


@pytest.mark.kafka
async def test_produce_and_consume_one_message(broker: LocalBroker) -> None:
    await _create_topic(broker.bootstrap, "weir.test.roundtrip")
    await _produce(broker.bootstrap, "weir.test.roundtrip", b"hello")
    assert await _consume(broker.bootstrap, "weir.test.roundtrip", 1) == [b"hello"]


@pytest.mark.kafka
async def test_restart_keeps_topic_data(broker: LocalBroker) -> None:
    await _create_topic(broker.bootstrap, "weir.test.restart")
    await _produce(broker.bootstrap, "weir.test.restart", b"before restart")
    old_pid = broker.status().pid
    status = await asyncio.to_thread(broker.restart)
    assert status.running
    assert status.pid != old_pid
    assert await _consume(broker.bootstrap, "weir.test.restart", 1) == [b"before restart"]


@pytest.mark.kafka
async def test_start_after_kill_recovers_topic_data(broker: LocalBroker) -> None:
    await _create_topic(broker.bootstrap, "weir.test.crash")
    await _produce(broker.bootstrap, "weir.test.crash", b"before crash")
    broker.kill()
    killed = broker.status()
    assert not killed.running
    assert killed.pid is None
    assert broker.pid_file.exists()  # a crash leaves its pid file behind
    status = await asyncio.to_thread(broker.start)
    assert status.running
    assert await _consume(broker.bootstrap, "weir.test.crash", 1) == [b"before crash"]


@pytest.mark.kafka
def test_stop_leaves_broker_not_running_and_second_stop_is_noop(broker: LocalBroker) -> None:
    broker.stop()
    status = broker.status()
    assert not status.running
    assert status.pid is None
    assert not broker.pid_file.exists()
    assert _bindable(broker.port)
    broker.stop()
    assert not broker.status().running


def test_port_in_use_gives_clear_broker_error(tmp_path: Path) -> None:
    port = free_port_pair()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(BrokerError, match=rf"127\.0\.0\.1:{port} .*already in use"):
            LocalBroker(_settings(port), state_dir=tmp_path).start()
    assert not (tmp_path / "broker.pid").exists()


def test_never_started_broker_is_not_running_and_stop_is_noop(tmp_path: Path) -> None:
    local = LocalBroker(_settings(free_port_pair()), state_dir=tmp_path)
    status = local.status()
    assert not status.running
    assert status.pid is None
    local.stop()


def test_stale_pid_file_of_another_process_is_ignored(tmp_path: Path) -> None:
    local = LocalBroker(_settings(free_port_pair()), state_dir=tmp_path)
    # Our own pid stands in for an unrelated process that reused a crashed broker's pid.
    local.pid_file.write_text(f"{os.getpid()}\n")
    assert local.status().pid is None
    local.stop()  # must not signal this process
    assert not local.pid_file.exists()
