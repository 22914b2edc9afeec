"""Nothing lost, nothing answered twice: workers killed with SIGKILL, the broker restarted."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition

from tests._kafka import read_results, read_topic
from tests._pipelines import diamond, inline_chain
from tests._sink import free_port
from tests.conftest import worker_env
from weir.core.config import BrokerSettings, WeirSettings, load_settings
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import Envelope, Result
from weir.streams import WeirClient, Worker
from weir.streams._in_place import IN_PLACE_HEADER
from weir.topics._aiokafka import rewind, stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.broker import LocalBroker, free_port_pair
from weir.topics.names import PipelineTopics, topic_specs

pytestmark = pytest.mark.kafka


def _expected(n: int) -> dict[str, int]:
    return {"double": 2 * (n + 1), "square": (n + 1) ** 2, "sum": 2 * (n + 1) + (n + 1) ** 2}


class _Counter:
    """Counts results (read_committed) as they arrive, in the background."""

    def __init__(self, settings: WeirSettings, topic: str) -> None:
        self.seen: set[str] = set()
        self._settings = settings
        self._topic = topic
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Counter:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        consumer = KafkaConnection.of(self._settings).consumer(
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            tps = [TopicPartition(self._topic, p) for p in range(self._settings.partitions)]
            consumer.assign(tps)
            await rewind(consumer, tps)
            while True:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    self.seen.update(Result.from_wire(r.value).request_id for r in records)
        finally:
            await stop_consumer(consumer)

    async def reach(self, n: int, timeout: float = 120) -> None:
        async with asyncio.timeout(timeout):
            while len(self.seen) < n:
                await asyncio.sleep(0.05)


def _spawn(
    repo: Path, env: dict[str, str], log: Path, target: str = "tests._pipelines:diamond_pipeline"
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "weir", "worker", target],
        cwd=repo,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_three_sigkills_during_5000_requests_lose_and_duplicate_nothing(
    kafka, pipeline_name, repo_root, tmp_path
):
    """A fan-in pipeline; its worker is killed -9 three times mid-run and restarted."""
    n = 5000
    async with TopicAdmin(kafka) as admin:
        await admin.ensure(topic_specs(diamond(pipeline_name), kafka))
    env = worker_env(kafka, WEIR_TEST_PIPELINE=pipeline_name, WEIR_TEST_SLOW_S="0.002")
    log = tmp_path / "worker.log"
    topic = PipelineTopics(pipeline_name).results
    kills = 0
    proc = _spawn(repo_root, env, log)
    try:
        async with WeirClient(kafka) as client, _Counter(kafka, topic) as counter:
            ids = await client.submit_many(pipeline_name, [{"n": i} for i in range(n)])
            for threshold in (n // 5, 2 * n // 5, 3 * n // 5):
                await counter.reach(threshold)
                proc.send_signal(signal.SIGKILL)
                assert proc.wait(30) == -signal.SIGKILL
                kills += 1
                proc = _spawn(repo_root, env, log)
            await counter.reach(n, timeout=240)
        results, counts = await read_results(kafka, topic, n, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert kills == 3
    assert set(results) == set(ids), f"{len(set(ids) - set(results))} requests unanswered"
    twice = [rid for rid, c in counts.items() if c > 1]
    assert twice == [], f"{len(twice)} requests answered more than once"
    assert sum(counts.values()) == n
    for i, rid in enumerate(ids):
        assert results[rid].status == "SUCCESS", results[rid]
        assert results[rid].value == _expected(i)
    assert log.read_text().count("worker") >= 4  # four worker lives in one log


async def _stats_until(port: int, done: Callable[[dict[str, Any]], bool]) -> None:
    """Poll the worker's ``/stats`` until ``done(stats)`` holds."""
    async with httpx.AsyncClient() as http, asyncio.timeout(60):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                response = await http.get(f"http://127.0.0.1:{port}/stats")
                if response.status_code == 200 and done(response.json()):
                    return
            await asyncio.sleep(0.1)


async def test_a_copy_of_a_join_input_seen_while_the_join_runs_does_not_end_it_before_a_kill(
    kafka, pipeline_name, repo_root, tmp_path
):
    """A redelivered copy of an input arrives while its completed join still runs; kill -9.

    The copy is a duplicate, but the join's request is not answered yet: after the kill the
    completing input is redelivered and must still complete the join.
    """
    async with TopicAdmin(kafka) as admin:
        await admin.ensure(topic_specs(diamond(pipeline_name), kafka))
    topics = PipelineTopics(pipeline_name)
    log = tmp_path / "worker.log"
    port = free_port()
    env = worker_env(kafka, WEIR_TEST_PIPELINE=pipeline_name, WEIR_WEB_PORT=str(port))
    # The first life's combine holds its thread long past the kill.
    proc = _spawn(repo_root, {**env, "WEIR_TEST_HOLD_S": "120"}, log)
    try:
        async with WeirClient(kafka) as client:
            [rid] = await client.submit_many(pipeline_name, [{"n": 4}])
            inputs = await read_topic(kafka, topics.step("combine"), until=2, idle_s=0.1)
            assert sorted(Envelope.decode(r.value).source for r in inputs) == ["double", "square"]
            # A copy of one input, as an upstream step redelivered after a crash writes it.
            producer = KafkaConnection.of(kafka).producer()
            await producer.start()
            try:
                first = inputs[0]
                await producer.send_and_wait(
                    first.topic, first.value, key=first.key, partition=first.partition
                )
            finally:
                await producer.stop()
            # The copy was handled (a duplicate) and only the held join is still in flight.
            await _stats_until(
                port, lambda s: s["duplicates"] >= 1 and s["received"] - s["completed"] == 1
            )
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
            proc = _spawn(repo_root, env, log)
            results, counts = await read_results(kafka, topics.results, 1, timeout=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert counts == {rid: 1}, log.read_text()[-3000:]
    assert results[rid].status == "SUCCESS"
    assert results[rid].value == _expected(4)


async def test_sigkills_in_an_inline_chain_run_in_place_lose_and_duplicate_nothing(
    kafka, pipeline_name, repo_root, tmp_path
):
    """Three inline steps, the last two run in place; the worker is killed -9 twice."""
    n = 4000
    target = "tests._pipelines:inline_chain_pipeline"
    async with TopicAdmin(kafka) as admin:
        await admin.ensure(topic_specs(inline_chain(pipeline_name), kafka))
    env = worker_env(
        kafka,
        WEIR_TEST_PIPELINE=pipeline_name,
        WEIR_IN_PLACE_STEPS="true",
        WEIR_IN_PLACE_MAX_BATCH="100000",
    )
    log = tmp_path / "worker.log"
    topics = PipelineTopics(pipeline_name)
    proc = _spawn(repo_root, env, log, target)
    try:
        async with WeirClient(kafka) as client, _Counter(kafka, topics.results) as counter:
            ids = await client.submit_many(pipeline_name, [{"n": i} for i in range(n)])
            for threshold in (n // 4, n // 2):
                await counter.reach(threshold)
                proc.send_signal(signal.SIGKILL)
                assert proc.wait(30) == -signal.SIGKILL
                proc = _spawn(repo_root, env, log, target)
            await counter.reach(n, timeout=240)
        results, counts = await read_results(kafka, topics.results, n, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert set(results) == set(ids), f"{len(set(ids) - set(results))} requests unanswered"
    assert [rid for rid, c in counts.items() if c > 1] == [], "answered more than once"
    for i, rid in enumerate(ids):
        assert results[rid].value == {"n": (i + 1) * 2 + 1}, results[rid]
    # The chain did run in place: its records are on the step topics, marked.
    marked = await read_topic(kafka, topics.step("third"), idle_s=0.5)
    assert any(IN_PLACE_HEADER in dict(r.headers) for r in marked)


@pytest.fixture
def own_broker(tmp_path: Path) -> LocalBroker:
    """A broker of this test's own: it is restarted mid-test."""
    port = free_port_pair()
    settings = load_settings(broker=BrokerSettings(port=port), partitions=4)
    broker = LocalBroker(settings, state_dir=tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_a_broker_restart_mid_run_loses_and_duplicates_nothing(
    kafka, own_broker, pipeline_name
):
    settings = kafka.model_copy(update={"kafka_bootstrap": own_broker.bootstrap})
    p = diamond(pipeline_name, slow_s=0.005)
    n = 2000
    topic = PipelineTopics(pipeline_name).results
    async with Worker(p, settings) as worker, WeirClient(settings) as client:
        ids = await client.submit_many(p.name, [{"n": i} for i in range(n)])
        async with _Counter(settings, topic) as counter:
            await counter.reach(n // 4)
            # Restart in a thread: the worker's event loop keeps running through it.
            restarted = threading.Event()

            def restart() -> None:
                own_broker.restart()
                restarted.set()

            thread = threading.Thread(target=restart)
            thread.start()
            await asyncio.to_thread(thread.join, 180)
            assert restarted.is_set()
            await counter.reach(n, timeout=240)
        results, counts = await read_results(settings, topic, n, timeout=60)
        stats = worker.stats
    assert set(results) == set(ids)
    assert collections.Counter(counts.values()) == {1: n}
    for i, rid in enumerate(ids):
        assert results[rid].value == _expected(i)
    assert stats.results >= n
