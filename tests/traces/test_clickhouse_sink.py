"""The ClickHouse sink end to end: real workers, a real ``weir sink`` process, real stores."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from decimal import Decimal

import pytest
from aiokafka import TopicPartition

from tests._clickhouse_http import ClickHouseHttp
from tests._kafka import read_results, read_topic
from tests._rows import assert_rows_close
from tests._sink import SinkProcess, free_port, sink_settings
from tests._traced import expected_attempts, flaky
from weir.core.errors import ModelTimeoutError
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import TRACE_EVENT_SCHEMA, TraceEvent
from weir.schemas.trace_batch import is_trace_batch, unpack_trace_events
from weir.streams import RetryPolicy, WeirClient, Worker
from weir.streams.pipeline import Pipeline
from weir.topics.names import PipelineTopics
from weir.traces import RemoteTraceStore, TraceStore
from weir.traces.rows import event_row
from weir.traces.schema import event_columns

pytestmark = pytest.mark.kafka

SEED_QUERY = (
    "SELECT step_name, AVG(duration_ms), COUNT(*) FROM pipeline_events WHERE status = 'FAILURE'"
    " AND error_type = 'model_timeout' AND created_at > NOW() - INTERVAL '7 days'"
    " GROUP BY step_name ORDER BY COUNT(*) DESC;"
)
N = 1000


async def wait_stored(url: str, pipeline: str, expected: int, timeout: float = 180) -> int:
    """Poll the running sink's API until ``expected`` attempts of ``pipeline`` are stored."""
    remote = RemoteTraceStore(url)
    stored = -1
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    stats = await asyncio.to_thread(remote.stats, since_ms=0, pipeline=pipeline)
                    stored = sum(s.attempts for s in stats.steps)
                except Exception:  # the sink's store may still be opening
                    stored = -1
                if stored >= expected:
                    return stored
                await asyncio.sleep(0.5)
    except TimeoutError:
        raise AssertionError(f"{stored} of {expected} events stored in time") from None
    finally:
        remote.close()


async def test_a_thousand_requests_with_injected_failures_store_one_row_per_attempt(
    kafka, pipeline_name, repo_root, tmp_path
):
    settings = sink_settings(kafka, pipeline_name, f"chdb://{tmp_path / 'store'}")
    sink = SinkProcess(repo_root, settings, tmp_path / "sink.log")
    pipeline = flaky(pipeline_name)
    expected = expected_attempts(N)
    try:
        await sink.wait_placed()
        worker = Worker(pipeline, settings)
        async with worker, WeirClient(settings) as client:
            ids = await client.submit_many(
                pipeline_name, [{"n": i, "email": f"user{i}@example.com"} for i in range(N)]
            )
            assert len(set(ids)) == N
            topics = PipelineTopics(pipeline_name)
            results, counts = await read_results(settings, topics.results, N, timeout=180)
            # Every attempt's event is sent before its input is finished: all are out by now.
            events = await read_topic(settings, settings.trace_topic, until=sum(expected.values()))
        assert len(results) == N and max(counts.values()) == 1
        assert worker.stats.attempts == sum(expected.values())
        await wait_stored(sink.url, pipeline_name, sum(expected.values()))
        await asyncio.sleep(1.0)  # a duplicate would arrive about now
    finally:
        assert sink.stop() == 0, sink.text()[-3000:]

    decoded = [TraceEvent.decode(e.value) for e in events]
    mine = [e for e in decoded if e["pipeline_id"] == pipeline_name]
    assert len(mine) == sum(expected.values())
    store = TraceStore.connect(settings)
    try:
        per_step = dict(
            store.query(
                "SELECT step_name, count() FROM pipeline_events WHERE pipeline_id = {p:String}"
                " GROUP BY step_name",
                p=pipeline_name,
            )
        )
        assert per_step == expected
        ((rows, ids_, attempts),) = store.query(
            "SELECT count(), uniqExact(event_id), uniqExact(request_id, step_name, attempt)"
            " FROM pipeline_events"
        )
        assert rows == ids_ == attempts == sum(expected.values())

        # The source document's query, unchanged, against the expected numbers.
        timeouts = [
            e for e in mine if e["status"] == "FAILURE" and e["error_type"] == "model_timeout"
        ]
        by_step: dict[str, list[float]] = collections.defaultdict(list)
        for e in timeouts:
            by_step[e["step_name"]].append(e["duration_ms"])
        got = store.query(SEED_QUERY)
        assert [(step, count) for step, _, count in got] == [("generate", 130)]
        assert [step for step, _ in sorted(by_step.items())] == ["generate"]
        assert got[0][1] == pytest.approx(sum(by_step["generate"]) / 130, rel=1e-9)

        # Model usage and redacted I/O made it too.
        ((calls, cost),) = store.query(
            "SELECT count(), toString(sum(calls.cost_usd)) FROM pipeline_events"
            " ARRAY JOIN calls WHERE step_name = 'generate'"
        )
        assert calls == expected["generate"]
        sent = sum(Decimal(c["cost_usd"]) for e in mine for c in e["calls"])
        assert Decimal(cost) == sent > 0
        (outputs,) = store.query(
            "SELECT any(output) FROM pipeline_events WHERE step_name = 'deliver'"
        )
        assert "[REDACTED:email]" in outputs[0] and "@example.com" not in outputs[0]
        (minute_attempts,) = store.query(
            "SELECT sum(attempts) FROM pipeline_latency_1m WHERE pipeline_id = {p:String}",
            p=pipeline_name,
        )
        assert minute_attempts[0] == sum(expected.values())
    finally:
        store.close()
    assert "trace store unavailable" not in sink.text()


# -- the store going away, and the sink dying between insert and commit ------------------------


def _event(pipeline: str, i: int) -> bytes:
    now = int(time.time() * 1000)
    return TraceEvent(
        pipeline_id=pipeline,
        step_name=f"step{i % 3}",
        request_id=f"r{i}",
        attempt=1,
        status="FAILURE" if i % 7 == 0 else "SUCCESS",
        disposition="emitted",
        error_type="model_timeout" if i % 7 == 0 else None,
        created_at=now,
        started_at=now - 5,
        submitted_at=now - 20,
        duration_ms=5.0 + i % 11,
        queue_wait_ms=1.0,
        worker_id="test",
        topic="t",
        partition=0,
        offset=i,
        event_id=f"{pipeline}-{i}",
    ).encode()


async def _produce(settings, values: list[bytes]) -> None:
    producer = KafkaConnection.of(settings).producer(acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(settings.trace_topic, v, key=str(i).encode())
            for i, v in enumerate(values)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _count(server: ClickHouseHttp) -> tuple[int, int]:
    text = server.query("SELECT count(), uniqExact(event_id) FROM weir.pipeline_events")
    rows, ids = text.split()
    return int(rows), int(ids)


async def _wait_count(server: ClickHouseHttp, n: int, timeout: float = 120) -> None:
    async with asyncio.timeout(timeout):
        while _count(server)[0] < n:
            await asyncio.sleep(0.3)


async def _committed(settings) -> int:
    """Offsets the sink's group has committed on the trace topic, summed over partitions."""
    consumer = KafkaConnection.of(settings).consumer(group_id=settings.sink_group)
    await consumer.start()
    try:
        total = 0
        for p in range(settings.partitions):
            total += await consumer.committed(TopicPartition(settings.trace_topic, p)) or 0
        return total
    finally:
        await consumer.stop()


async def test_the_sink_survives_the_store_being_unavailable_and_loses_nothing(
    kafka, pipeline_name, repo_root, tmp_path
):
    server = ClickHouseHttp(tmp_path / "clickhouse", free_port())
    await server.start()
    settings = sink_settings(kafka, pipeline_name, server.dsn)
    sink = SinkProcess(repo_root, settings, tmp_path / "sink.log")
    values = [_event(pipeline_name, i) for i in range(900)]
    try:
        await sink.wait_placed()
        await _produce(settings, values[:300])
        await _wait_count(server, 300)

        await server.stop()  # ClickHouse goes away: connections refused
        await _produce(settings, values[300:600])
        async with asyncio.timeout(60):
            while sink.text().count("trace store unavailable") < 3:
                await asyncio.sleep(0.2)
        assert _count(server) == (300, 300)
        assert await _committed(settings) == 300, "committed offsets of events not stored"

        await server.start()  # and comes back
        await _wait_count(server, 600)
        # Phase 3, with one event resent (as a worker's outbox does after a broker error).
        await _produce(settings, [*values[600:], values[650]])
        await _wait_count(server, 900)
        await asyncio.sleep(1.5)  # a duplicate would land about now
        assert await _committed(settings) == 901
    finally:
        assert sink.stop() == 0, sink.text()[-3000:]
        await server.stop()
    assert _count(server) == (900, 900)
    stored = set(server.query("SELECT event_id FROM weir.pipeline_events").split())
    assert stored == {f"{pipeline_name}-{i}" for i in range(900)}
    minute = server.query("SELECT sum(attempts) FROM weir.pipeline_latency_1m").strip()
    assert minute == "900"
    assert "trace store is back" in sink.text()
    server.close()


async def test_a_sink_killed_between_insert_and_commit_does_not_store_events_twice(
    kafka, pipeline_name, repo_root, tmp_path
):
    server = ClickHouseHttp(tmp_path / "clickhouse", free_port())
    await server.start()
    settings = sink_settings(kafka, pipeline_name, server.dsn)
    first = SinkProcess(repo_root, settings, tmp_path / "first.log")
    values = [_event(pipeline_name, i) for i in range(600)]
    try:
        await first.wait_placed()

        def kill_the_sink() -> None:
            server.after_insert = None
            os.kill(first.proc.pid, signal.SIGKILL)

        server.after_insert = kill_the_sink  # stored, then the sink dies before its commit
        await _produce(settings, values[:400])
        async with asyncio.timeout(60):
            while first.proc.poll() is None:
                await asyncio.sleep(0.1)
        assert first.proc.returncode == -signal.SIGKILL
        stored_before, _ = _count(server)
        assert 0 < stored_before <= 400
        assert await _committed(settings) == 0
    finally:
        first.stop(signal.SIGKILL)
    second = SinkProcess(repo_root, settings, tmp_path / "second.log")
    try:
        await second.wait_placed()
        await _produce(settings, values[400:])
        await _wait_count(server, 600)
        await asyncio.sleep(1.5)
    finally:
        assert second.stop() == 0, second.text()[-3000:]
        await server.stop()
    assert _count(server) == (600, 600)
    assert "store already holds offsets" in second.text()
    minute = server.query("SELECT sum(attempts) FROM weir.pipeline_latency_1m").strip()
    assert minute == "600"
    server.close()


# -- a worker's batches of trace events ------------------------------------------------------


def _inline_chain(name: str) -> Pipeline:
    """Three cheap inline steps (a worker runs them a fetched batch at a time); some time out
    on both of their attempts (retried once, then dead-lettered)."""
    p = Pipeline(name, retry=RetryPolicy(maximum_attempts=2, initial_interval=0.2))

    @p.step(inline=True)
    def one(n: int) -> int:
        return n + 1

    @p.step(depends_on=[one], inline=True)
    def two(one: int) -> int:
        if one % 100 == 4:
            raise ModelTimeoutError(f"the model took too long for {one}")
        return one + 1

    @p.step(depends_on=[two], inline=True)
    def three(two: int) -> int:
        return two + 1

    return p


async def test_trace_events_of_10000_requests_arrive_with_the_same_columns_and_values(
    kafka, pipeline_name, repo_root, tmp_path
):
    n = 10_000
    failing = len([i for i in range(n) if (i + 1) % 100 == 4])
    # one, two and its retries, three (not after two failed)
    expected = n + n + failing + (n - failing)
    settings = sink_settings(
        kafka, pipeline_name, f"chdb://{tmp_path / 'store'}", sink_batch_size=5000
    )
    sink = SinkProcess(repo_root, settings, tmp_path / "sink.log")
    pipeline = _inline_chain(pipeline_name)
    try:
        await sink.wait_placed()
        async with Worker(pipeline, settings), WeirClient(settings) as client:
            await client.submit_many(pipeline_name, [{"n": i} for i in range(n)])
            results, counts = await read_results(
                settings, PipelineTopics(pipeline_name).results, n, timeout=300
            )
        assert len(results) == n and max(counts.values()) == 1
        records = await read_topic(settings, settings.trace_topic, idle_s=2.0)
        await wait_stored(sink.url, pipeline_name, expected, timeout=300)
    finally:
        assert sink.stop() == 0, sink.text()[-3000:]

    # The worker wrote its events in batches: far fewer records than events.
    packed = [r for r in records if is_trace_batch(r.headers)]
    events = [
        (r.partition, r.offset, raw)
        for r in records
        for raw in unpack_trace_events(r.value, r.headers)
    ]
    assert len(events) == expected
    singles = collections.Counter(
        TraceEvent.decode(r.value)["step_name"] for r in records if not is_trace_batch(r.headers)
    )
    assert packed and len(records) < expected / 5, (len(records), len(packed), singles)

    # The rows the sink stored are the rows each event makes on its own, decoded by fastavro
    # as before batches existed: same columns, same values.
    store = TraceStore.connect(settings)
    # Beside it in the same engine (one data directory per process): a database of its own.
    reference = TraceStore.connect(settings.model_copy(update={"clickhouse_database": "before"}))
    try:
        rows = [event_row(TRACE_EVENT_SCHEMA.decode(raw), p, o) for p, o, raw in events]
        for start in range(0, len(rows), 5000):
            # Through clickhouse-connect's Native writer, as before inserts went in Arrow.
            reference.insert(rows[start : start + 5000], token=f"reference-{start}", arrow=False)
        columns = ", ".join(event_columns())
        everything = f"SELECT {columns} FROM pipeline_events ORDER BY event_id"
        got, want = store.query(everything), reference.query(everything)
        assert len(got) == expected
        assert got == want
        # The source document's query, unchanged.
        assert_rows_close(store.query(SEED_QUERY), reference.query(SEED_QUERY))
        ((step, _, count),) = store.query(SEED_QUERY)
        assert (step, count) == ("two", 2 * failing)  # each attempt of the failing ones
        dispositions = store.query(
            "SELECT disposition, count() FROM pipeline_events WHERE status = 'FAILURE'"
            " GROUP BY disposition ORDER BY disposition"
        )
        assert dispositions == [("dead_lettered", failing), ("retry_scheduled", failing)]
    finally:
        store.close()
        reference.close()
