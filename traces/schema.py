"""The trace store's tables: ``pipeline_events``, its per-minute aggregates, their DDL.

One table holds one row per step attempt (the trace topic's events).  It is a
plain ``MergeTree`` so that ad-hoc SQL such as::

    SELECT step_name, AVG(duration_ms), COUNT(*) FROM pipeline_events
    WHERE status = 'FAILURE' AND error_type = 'model_timeout'
      AND created_at > NOW() - INTERVAL '7 days'
    GROUP BY step_name ORDER BY COUNT(*) DESC;

returns exact numbers with no ``FINAL``: duplicates are kept out at insert time
(see ``weir.traces.clickhouse_sink``), not merged away later.  Design:

* partitioned by day (``toDate(created_at)``), TTL ``trace_ttl_days``;
* ordered by ``(pipeline_id, step_name, status, created_at)`` for per-step
  latency and failure queries, with a bloom-filter index on ``request_id``
  for single-request timelines;
* ``LowCardinality`` names; model calls as a ``Nested`` column, so cost per
  model is an ``ARRAY JOIN`` away;
* ``replay_id`` and ``variant``: empty for live traffic; a step replay's attempts carry
  its id and candidate (``weir replay``), so live-only questions add ``replay_id = ''``;
* ``pipeline_latency_1m``: an ``AggregatingMergeTree`` fed by a materialized
  view with per-minute t-digest quantile states of processing time and queue
  wait per pipeline and step (what the dashboards read).

>>> event_columns()[:3]
('event_id', 'pipeline_id', 'step_name')
>>> [s.split("(")[0].strip() for s in ddl("weir", 7)][:2]
['CREATE DATABASE IF NOT EXISTS `weir`', 'CREATE TABLE IF NOT EXISTS `weir`.pipeline_events']
"""

from __future__ import annotations

__all__ = [
    "EVENTS_TABLE",
    "LATENCY_TABLE",
    "LATENCY_VIEW",
    "QUANTILES",
    "ddl",
    "event_columns",
    "latency_view_query",
]

EVENTS_TABLE = "pipeline_events"
LATENCY_TABLE = "pipeline_latency_1m"
LATENCY_VIEW = "pipeline_latency_1m_mv"
QUANTILES = "0.5, 0.95, 0.99"

# Insert order of pipeline_events columns, and how a decoded trace event fills each.
_COLUMNS: tuple[str, ...] = (
    "event_id",
    "pipeline_id",
    "step_name",
    "request_id",
    "attempt",
    "status",
    "disposition",
    "error_type",
    "error_message",
    "created_at",
    "started_at",
    "submitted_at",
    "duration_ms",
    "queue_wait_ms",
    "worker_id",
    "input_topic",
    "input_partition",
    "input_offset",
    "endpoint",
    "model",
    "provider",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "usage_source",
    "routing_rule",
    "rules_version",
    "calls.endpoint",
    "calls.provider",
    "calls.model",
    "calls.operation",
    "calls.status",
    "calls.error_type",
    "calls.input_tokens",
    "calls.output_tokens",
    "calls.cost_usd",
    "calls.duration_ms",
    "calls.ttft_ms",
    "calls.rule",
    "trace_id",
    "span_id",
    "input",
    "output",
    "trace_partition",
    "trace_offset",
    "replay_id",
    "variant",
)


def ddl(database: str, ttl_days: int) -> list[str]:
    """The statements that create the database, the tables and the view (idempotent)."""
    db = f"`{database}`"
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""
CREATE TABLE IF NOT EXISTS {db}.{EVENTS_TABLE}
(
    event_id String,
    pipeline_id LowCardinality(String),
    step_name LowCardinality(String),
    request_id String,
    attempt UInt16,
    status LowCardinality(String),
    disposition LowCardinality(String),
    error_type LowCardinality(Nullable(String)),
    error_message Nullable(String) CODEC(ZSTD(3)),
    created_at DateTime64(3, 'UTC'),
    started_at DateTime64(3, 'UTC'),
    submitted_at DateTime64(3, 'UTC'),
    duration_ms Float64,
    queue_wait_ms Float64,
    worker_id LowCardinality(String),
    input_topic LowCardinality(String),
    input_partition Int32,
    input_offset Int64,
    endpoint LowCardinality(Nullable(String)),
    model LowCardinality(Nullable(String)),
    provider LowCardinality(Nullable(String)),
    input_tokens UInt64,
    output_tokens UInt64,
    cost_usd Decimal(18, 12),
    usage_source LowCardinality(Nullable(String)),
    routing_rule LowCardinality(Nullable(String)),
    rules_version Nullable(Int64),
    calls Nested(
        endpoint LowCardinality(String),
        provider LowCardinality(String),
        model LowCardinality(String),
        operation LowCardinality(String),
        status LowCardinality(String),
        error_type LowCardinality(String),
        input_tokens UInt64,
        output_tokens UInt64,
        cost_usd Decimal(18, 12),
        duration_ms Float64,
        ttft_ms Float64,
        rule LowCardinality(String)
    ),
    trace_id String,
    span_id String,
    input Nullable(String) CODEC(ZSTD(3)),
    output Nullable(String) CODEC(ZSTD(3)),
    trace_partition Int32,
    trace_offset Int64,
    replay_id String DEFAULT '',
    variant LowCardinality(String) DEFAULT '',
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX request_idx request_id TYPE bloom_filter(0.001) GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toDate(created_at)
ORDER BY (pipeline_id, step_name, status, created_at)
TTL toDateTime(created_at) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000
""",
        f"""
CREATE TABLE IF NOT EXISTS {db}.{LATENCY_TABLE}
(
    minute DateTime('UTC'),
    pipeline_id LowCardinality(String),
    step_name LowCardinality(String),
    attempts SimpleAggregateFunction(sum, UInt64),
    failures SimpleAggregateFunction(sum, UInt64),
    input_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens SimpleAggregateFunction(sum, UInt64),
    cost_usd SimpleAggregateFunction(sum, Decimal(38, 12)),
    duration_q AggregateFunction(quantilesTDigest({QUANTILES}), Float64),
    queue_wait_q AggregateFunction(quantilesTDigest({QUANTILES}), Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(minute)
ORDER BY (pipeline_id, step_name, minute)
TTL minute + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000
""",
        # Before the view: on a table of an earlier weir, it reads the columns they add.
        *_migrations(db),
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{LATENCY_VIEW} TO {db}.{LATENCY_TABLE} AS"
        f" {latency_view_query(database)}",
    ]


def latency_view_query(database: str) -> str:
    """The per-minute view's SELECT: live attempts only (``replay_id = ''``)."""
    db = f"`{database}`"
    return f"""
SELECT
    toStartOfMinute(created_at) AS minute,
    pipeline_id,
    step_name,
    toUInt64(count()) AS attempts,
    toUInt64(countIf(status = 'FAILURE')) AS failures,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(toDecimal128(cost_usd, 12)) AS cost_usd,
    quantilesTDigestState({QUANTILES})(duration_ms) AS duration_q,
    quantilesTDigestState({QUANTILES})(queue_wait_ms) AS queue_wait_q
FROM {db}.{EVENTS_TABLE}
WHERE replay_id = ''
GROUP BY minute, pipeline_id, step_name
"""


def _migrations(db: str) -> list[str]:
    """What a table created by an earlier weir lacks (no-ops on a table created now)."""
    return [
        # Replay tags: live rows, old and new, have '' (so queries written before still hold).
        f"ALTER TABLE {db}.{EVENTS_TABLE} ADD COLUMN IF NOT EXISTS replay_id String DEFAULT ''"
        " AFTER trace_offset",
        f"ALTER TABLE {db}.{EVENTS_TABLE}"
        " ADD COLUMN IF NOT EXISTS variant LowCardinality(String) DEFAULT '' AFTER replay_id",
    ]


def event_columns() -> tuple[str, ...]:
    """The ``pipeline_events`` columns a sink inserts, in order."""
    return _COLUMNS
