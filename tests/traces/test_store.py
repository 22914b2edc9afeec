"""The trace store on the embedded engine: schema, exact seed query, dedup, TTL, timelines."""

from __future__ import annotations

import dataclasses
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from tests._rows import assert_rows_close
from weir.core.config import load_settings
from weir.core.errors import RequestNotFoundError
from weir.schemas.messages import ModelCall, TraceEvent
from weir.traces import (
    StepAttempt,
    TraceStore,
    build_timeline,
    event_row,
    parse_window,
)
from weir.traces.schema import event_columns, latency_view_query

SEED_QUERY = (
    "SELECT step_name, AVG(duration_ms), COUNT(*) FROM pipeline_events WHERE status = 'FAILURE'"
    " AND error_type = 'model_timeout' AND created_at > NOW() - INTERVAL '7 days'"
    " GROUP BY step_name ORDER BY COUNT(*) DESC;"
)
STEPS = ("retrieve", "generate", "deliver")


def synthetic_events(
    pipeline: str, requests: int, *, now_ms: int, spread_min: int = 60, seed: int = 7
) -> list[TraceEvent]:
    """Requests over the last ``spread_min`` minutes: three steps, some retried timeouts."""
    rng = random.Random(seed)
    out = []
    for i in range(requests):
        submitted = now_ms - rng.randint(0, spread_min * 60_000) - 10_000
        t = submitted
        for step in STEPS:
            attempts = 2 if (step == "generate" and i % 9 == 0) else 1
            if step == "retrieve" and i % 13 == 0:
                attempts = 2
            for attempt in range(1, attempts + 1):
                failed = attempt < attempts
                queue = rng.uniform(1, 20)
                duration = rng.uniform(50, 400) if step == "generate" else rng.uniform(2, 30)
                if failed:
                    duration = rng.uniform(800, 1200)
                started = int(t + queue)
                ended = int(started + duration)
                calls = []
                if step == "generate":
                    model, provider = ("gpt-4o-mini", "openai") if i % 2 else ("haiku", "anthropic")
                    calls = [
                        ModelCall(
                            step=step,
                            attempt=attempt,
                            endpoint=f"{provider}-main",
                            provider=provider,
                            model=model,
                            operation="chat",
                            status="FAILURE" if failed else "SUCCESS",
                            started_at=started,
                            duration_ms=duration,
                            input_tokens=120,
                            output_tokens=0 if failed else 30,
                            cost_usd=Decimal(0) if failed else Decimal("0.00009"),
                            error_type="model_timeout" if failed else None,
                        )
                    ]
                error = None
                if failed:
                    error = "model_timeout" if step == "generate" else "model_unavailable"
                out.append(
                    TraceEvent(
                        pipeline_id=pipeline,
                        step_name=step,
                        request_id=f"{pipeline}-r{i}",
                        attempt=attempt,
                        status="FAILURE" if failed else "SUCCESS",
                        disposition="retry_scheduled" if failed else "emitted",
                        error_type=error,
                        created_at=ended,
                        started_at=started,
                        submitted_at=submitted,
                        duration_ms=duration,
                        queue_wait_ms=queue,
                        worker_id="w1",
                        topic=f"{pipeline}.step.{step}",
                        partition=i % 4,
                        offset=i,
                        calls=calls,
                    )
                )
                t = ended + (200 if failed else 0)  # retry back-off
    return out


def rows(events: list[TraceEvent], first_offset: int = 0) -> list[list[object]]:
    return [
        event_row(TraceEvent.decode(e.encode()), 0, first_offset + n) for n, e in enumerate(events)
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TraceStore]:
    opened = TraceStore.connect(load_settings(clickhouse_dsn=f"chdb://{tmp_path / 'store'}"))
    try:
        yield opened
    finally:
        opened.close()


def test_the_seed_query_runs_unchanged_and_returns_exact_counts_and_averages(store) -> None:
    now = int(time.time() * 1000)
    events = synthetic_events("support", 300, now_ms=now)
    old = synthetic_events("support", 20, now_ms=now - 9 * 86_400_000, seed=8)  # 9 days ago
    store.insert(rows(events + old), token="t1")
    timeouts = [e for e in events if e.status == "FAILURE" and e.error_type == "model_timeout"]
    assert store.query(SEED_QUERY) == [
        ("generate", pytest.approx(sum(e.duration_ms for e in timeouts) / len(timeouts)), 34)
    ]
    assert len(timeouts) == 34


def test_an_insert_retried_with_its_token_is_stored_once_in_table_and_aggregates(store) -> None:
    now = int(time.time() * 1000)
    batch = rows(synthetic_events("p", 50, now_ms=now))
    store.insert(batch, token="batch-1")
    store.insert(batch, token="batch-1")  # the answer was lost; the sink retries
    ((count,),) = store.query("SELECT count() FROM pipeline_events")
    ((minutes,),) = store.query("SELECT sum(attempts) FROM pipeline_latency_1m")
    assert count == minutes == len(batch)
    store.insert(batch[:10], token="batch-2")  # a different batch is a different insert
    ((count,),) = store.query("SELECT count() FROM pipeline_events")
    assert count == len(batch) + 10


def test_progress_is_the_next_offset_per_trace_partition(store) -> None:
    now = int(time.time() * 1000)
    events = synthetic_events("p", 5, now_ms=now)
    batch = [event_row(TraceEvent.decode(e.encode()), n % 2, 100 + n) for n, e in enumerate(events)]
    store.insert(batch, token="x")
    last = {p: max(100 + n for n in range(len(events)) if n % 2 == p) for p in (0, 1)}
    assert store.progress() == {0: last[0] + 1, 1: last[1] + 1}
    assert store.progress([1]) == {1: last[1] + 1}


def test_the_ttl_follows_the_settings(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'store'}"
    TraceStore.connect(load_settings(clickhouse_dsn=dsn, trace_ttl_days=30)).close()
    store = TraceStore.connect(load_settings(clickhouse_dsn=dsn, trace_ttl_days=3))
    try:
        for table in ("pipeline_events", "pipeline_latency_1m"):
            ((engine,),) = store.query(
                "SELECT engine_full FROM system.tables"
                " WHERE database = 'weir' AND name = {t:String}",
                t=table,
            )
            assert "toIntervalDay(3)" in engine, engine
    finally:
        store.close()


def test_stats_give_percentiles_failures_and_cost(store) -> None:
    now = int(time.time() * 1000)
    events = synthetic_events("p", 200, now_ms=now)
    store.insert(rows(events), token="s")
    stats = store.stats(since_ms=now - 3 * 3_600_000, pipeline="p")
    by_step = {s.step_name: s for s in stats.steps}
    assert {k: v.attempts for k, v in by_step.items()} == {
        step: sum(1 for e in events if e.step_name == step) for step in STEPS
    }
    generate = by_step["generate"]
    assert generate.duration_p50_ms < generate.duration_p99_ms
    assert {(f.step_name, f.error_type): f.count for f in stats.failures} == {
        ("generate", "model_timeout"): 23,
        ("retrieve", "model_unavailable"): 16,
    }
    cost = {c.model: Decimal(c.cost_usd) for c in stats.cost}
    assert cost == {"gpt-4o-mini": Decimal("0.009"), "haiku": Decimal("0.009")}
    series = store.latency_series(since_ms=now - 3 * 3_600_000, pipeline="p", bucket_minutes=10)
    assert sum(p.attempts for p in series) == len(events)
    assert all(p.p50_ms <= p.p95_ms <= p.p99_ms for p in series)
    slowest = store.slowest(since_ms=now - 3 * 3_600_000, pipeline="p", limit=5)
    assert len(slowest) == 5
    assert slowest[0].total_ms >= slowest[-1].total_ms


def test_the_timeline_names_the_step_furthest_above_its_p50(store) -> None:
    now = int(time.time() * 1000)
    events = synthetic_events("p", 100, now_ms=now - 60_000)
    slow = [e for e in events if e.request_id == "p-r1"]  # not retried (1 % 9, 1 % 13)
    for e in slow:  # make its deliver step wait 3 s in Kafka
        if e.step_name == "deliver":
            e.queue_wait_ms += 3000
            e.started_at += 3000
            e.created_at += 3000
    store.insert(rows(events), token="tl")
    timeline = store.timeline("p-r1")
    assert timeline.slow_step == "deliver"
    deliver = next(s for s in timeline.steps if s.step_name == "deliver")
    assert deliver.cause == "queue wait"
    assert "slow step: deliver" in timeline.verdict()
    assert "waited" in timeline.verdict()
    with pytest.raises(RequestNotFoundError):
        store.timeline("nope")


def test_retries_count_towards_the_step_they_delayed() -> None:
    now = int(time.time() * 1000)
    events = synthetic_events("p", 10, now_ms=now)
    retried = [e for e in events if e.request_id == "p-r9"]  # generate retried (9 % 9)
    attempts = [
        StepAttempt(
            e.step_name,
            e.attempt,
            e.status,
            e.disposition,
            e.error_type,
            None,
            e.started_at,
            e.created_at,
            e.queue_wait_ms,
            e.duration_ms,
            "w",
            None,
            None,
            None,
            None,
            0,
            0,
            "0",
            "",
            "",
        )
        for e in retried
    ]
    timeline = build_timeline(
        "p-r0",
        "p",
        retried[0].submitted_at,
        attempts,
        {"retrieve": 40.0, "generate": 300.0, "deliver": 30.0},
        pipeline_p50_ms=400.0,
        baseline_requests=10,
    )
    assert timeline.slow_step == "generate"
    generate = next(s for s in timeline.steps if s.step_name == "generate")
    assert generate.attempts == 2 and generate.cause == "retries"
    assert generate.error_types == ["model_timeout"]
    assert "failed attempt" in timeline.verdict()


@pytest.mark.parametrize("bad", ["", "1y", "-1h", "0", "soon"])
def test_time_windows_are_validated(bad: str) -> None:
    with pytest.raises(ValueError, match="not a time window"):
        parse_window(bad)


def test_a_table_created_before_replay_tags_gains_them_and_keeps_its_rows(tmp_path: Path) -> None:
    settings = load_settings(clickhouse_dsn=f"chdb://{tmp_path / 'store'}")
    now = int(time.time() * 1000)
    live = synthetic_events("old", 40, now_ms=now)
    store = TraceStore.connect(settings)
    try:
        # The table as an earlier weir made it: no replay columns, rows inserted without them,
        # and a per-minute view that counts every row.
        store._command("DROP VIEW weir.pipeline_latency_1m_mv")
        store._command("ALTER TABLE weir.pipeline_events DROP COLUMN variant")
        store._command("ALTER TABLE weir.pipeline_events DROP COLUMN replay_id")
        old_view = latency_view_query("weir").replace("WHERE replay_id = ''", "")
        store._command(
            "CREATE MATERIALIZED VIEW weir.pipeline_latency_1m_mv TO weir.pipeline_latency_1m"
            f" AS {old_view}"
        )
        columns = [c for c in event_columns() if c not in {"replay_id", "variant"}]
        store._client.insert(
            "pipeline_events",
            [row[: len(columns)] for row in rows(live)],
            column_names=columns,
        )
        before = store.query(SEED_QUERY)
    finally:
        store.close()
    store = TraceStore.connect(settings)  # ensure_schema migrates
    try:
        assert store.query(SEED_QUERY) == before
        replayed = [
            dataclasses.replace(e, replay_id="rs-1", variant="endpoint:b", event_id=f"x{n}")
            for n, e in enumerate(live[:5])
        ]
        store.insert(rows(replayed, first_offset=1000), token="replay")
        tags = store.query(
            "SELECT replay_id, variant, count() FROM pipeline_events"
            " GROUP BY replay_id, variant ORDER BY replay_id"
        )
        assert tags == [("", "", len(live)), ("rs-1", "endpoint:b", 5)]
        # The migrated view counted the old rows and leaves the replayed ones out.
        per_minute = store.query("SELECT sum(attempts) FROM pipeline_latency_1m")
        assert per_minute == [(len(live),)]
    finally:
        store.close()


def test_a_store_not_yet_migrated_answers_stats_read_only(tmp_path: Path) -> None:
    settings = load_settings(clickhouse_dsn=f"chdb://{tmp_path / 'store'}")
    live = synthetic_events("old", 40, now_ms=int(time.time() * 1000))
    store = TraceStore.connect(settings)
    try:  # as an earlier weir left it: no replay columns
        store._command("DROP VIEW weir.pipeline_latency_1m_mv")
        store._command("ALTER TABLE weir.pipeline_events DROP COLUMN variant")
        store._command("ALTER TABLE weir.pipeline_events DROP COLUMN replay_id")
        columns = [c for c in event_columns() if c not in {"replay_id", "variant"}]
        store._client.insert(
            "pipeline_events", [row[: len(columns)] for row in rows(live)], column_names=columns
        )
    finally:
        store.close()
    reader = TraceStore.connect(settings, create_schema=False)  # weir stats: reads, never alters
    try:
        stats = reader.stats(since_ms=0)
    finally:
        reader.close()
    assert sum(s.attempts for s in stats.steps) == len(live)


def test_arrow_and_native_inserts_store_the_same_values(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    events = synthetic_events("support", 200, now_ms=now)
    events[0].error_message = "naïve 😀 failure\nline two"
    events[1].input, events[1].output = '{"q": "é"}', None
    events[2].calls[0:0] = [dataclasses.replace(events[2].calls[0], ttft_ms=12.5, rule="cheap")]
    events[3].calls = [dataclasses.replace(c, rules_version=7) for c in events[3].calls]
    block = rows(events)
    settings = load_settings(clickhouse_dsn=f"chdb://{tmp_path / 'store'}")
    arrow = TraceStore.connect(settings)
    native = TraceStore.connect(settings.model_copy(update={"clickhouse_database": "native"}))
    try:
        arrow.insert(block, token="t1", arrow=True)
        arrow.insert(block, token="t1", arrow=True)  # a retry: stored once
        native.insert(block, token="t1", arrow=False)
        columns = ", ".join(f"`{c}`" for c in event_columns())
        everything = f"SELECT {columns} FROM pipeline_events ORDER BY event_id"
        got, want = arrow.query(everything), native.query(everything)
        assert len(got) == len(events)
        assert got == want
        minute = (
            "SELECT minute, step_name, sum(attempts), sum(failures), sum(cost_usd),"
            " quantilesTDigestMerge(0.5, 0.95, 0.99)(duration_q) FROM pipeline_latency_1m"
            " GROUP BY minute, step_name ORDER BY minute, step_name"
        )
        # Aggregates of floats: the engine may add in a different order, last digit differs.
        assert_rows_close(arrow.query(minute), native.query(minute))
        assert_rows_close(arrow.query(SEED_QUERY), native.query(SEED_QUERY))
    finally:
        arrow.close()
        native.close()


def test_a_native_crash_after_the_embedded_engine_opened_still_prints_python_stacks(tmp_path):
    # ClickHouse's signal handlers, installed by the embedded session, used to swallow
    # SIGSEGV without a word (how an intermittent crash of the suite hid its cause).
    script = (
        "import faulthandler\n"
        "faulthandler.enable()\n"
        "from weir.core.config import load_settings\n"
        "from weir.traces import TraceStore\n"
        f"store = TraceStore.connect(load_settings(), dsn='chdb://{tmp_path / 'db'}')\n"
        "assert store.query('SELECT 1') == [(1,)]\n"
        "faulthandler._sigsegv()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == -signal.SIGSEGV, done.stderr[-2000:]
    assert "Fatal Python error: Segmentation fault" in done.stderr, done.stderr[-2000:]
    assert 'File "<string>", line 7' in done.stderr
