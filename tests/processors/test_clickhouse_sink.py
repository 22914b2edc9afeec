"""The ClickHouse sink end to end: a real worker, a real ``weir sink`` process, the embedded engine."""

from __future__ import annotations

import asyncio
import collections
from decimal import Decimal

import pytest

from processors.trace_store import RemoteTraceStore, TraceStore
from schemas.messages import TraceEvent
from streams import WeirClient, Worker
from tests._kafka import read_results, read_topic
from tests._sink import SinkProcess, sink_settings
from tests._traced import expected_attempts, flaky
from topics.names import PipelineTopics

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
        (rows, ids_, attempts), = store.query(
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
        (calls, cost), = store.query(
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
