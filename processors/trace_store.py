"""The trace store: ``pipeline_events`` in ClickHouse, its dashboard aggregates, its queries.

One table holds one row per step attempt (the trace topic's events).  It is a
plain ``MergeTree`` so that ad-hoc SQL such as::

    SELECT step_name, AVG(duration_ms), COUNT(*) FROM pipeline_events
    WHERE status = 'FAILURE' AND error_type = 'model_timeout'
      AND created_at > NOW() - INTERVAL '7 days'
    GROUP BY step_name ORDER BY COUNT(*) DESC;

returns exact numbers with no ``FINAL``: duplicates are kept out at insert time
(see ``weir.processors.clickhouse_sink``), not merged away later.  Design:

* partitioned by day (``toDate(created_at)``), TTL ``trace_ttl_days``;
* ordered by ``(pipeline_id, step_name, status, created_at)`` for per-step
  latency and failure queries, with a bloom-filter index on ``request_id``
  for single-request timelines;
* ``LowCardinality`` names; model calls as a ``Nested`` column, so cost per
  model is an ``ARRAY JOIN`` away;
* ``pipeline_latency_1m``: an ``AggregatingMergeTree`` fed by a materialized
  view with per-minute t-digest quantile states of processing time and queue
  wait per pipeline and step (what the dashboards read).

The same code serves the embedded engine (``chdb://path``, in-process, one
process per data directory) and a ClickHouse server (``http(s)://``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr

from weir.core.config import WeirSettings
from weir.core.errors import (
    RequestNotFoundError,
    TraceQueryError,
    TraceSchemaMissingError,
    TraceStoreError,
)
from weir.core.urls import mask_url
from weir.processors.sink_status import (
    check_store_free,
    empty_store_hint,
    running_sink_url,
    sink_file,
    sink_status,
)

__all__ = [
    "EVENTS_TABLE",
    "LATENCY_TABLE",
    "CostByModel",
    "FailureCount",
    "LatencyPoint",
    "RemoteTraceStore",
    "SlowRequest",
    "Stats",
    "StepAttempt",
    "StepStats",
    "StepTime",
    "Timeline",
    "TraceQueries",
    "TraceStore",
    "event_columns",
    "event_row",
    "open_queries",
    "parse_window",
    "running_sink_url",
    "sink_file",
]

log = logging.getLogger("weir.trace_store")

EVENTS_TABLE = "pipeline_events"
LATENCY_TABLE = "pipeline_latency_1m"
_LATENCY_VIEW = "pipeline_latency_1m_mv"
_QUANTILES = "0.5, 0.95, 0.99"

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
)


def _ddl(database: str, ttl_days: int) -> list[str]:
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
    duration_q AggregateFunction(quantilesTDigest({_QUANTILES}), Float64),
    queue_wait_q AggregateFunction(quantilesTDigest({_QUANTILES}), Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(minute)
ORDER BY (pipeline_id, step_name, minute)
TTL minute + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000
""",
        f"""
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{_LATENCY_VIEW} TO {db}.{LATENCY_TABLE} AS
SELECT
    toStartOfMinute(created_at) AS minute,
    pipeline_id,
    step_name,
    toUInt64(count()) AS attempts,
    toUInt64(countIf(status = 'FAILURE')) AS failures,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(toDecimal128(cost_usd, 12)) AS cost_usd,
    quantilesTDigestState({_QUANTILES})(duration_ms) AS duration_q,
    quantilesTDigestState({_QUANTILES})(queue_wait_ms) AS queue_wait_q
FROM {db}.{EVENTS_TABLE}
GROUP BY minute, pipeline_id, step_name
""",
    ]


def event_columns() -> tuple[str, ...]:
    """The ``pipeline_events`` columns a sink inserts, in order."""
    return _COLUMNS


def _ts(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def _ms(value: dt.datetime) -> int:
    if value.tzinfo is None:  # the engine hands back naive UTC
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


def event_row(event: Mapping[str, Any], trace_partition: int, trace_offset: int) -> list[Any]:
    """One ``pipeline_events`` row (``event_columns()`` order) from a decoded trace event."""
    calls = event.get("calls") or ()
    return [
        event["event_id"],
        event["pipeline_id"],
        event["step_name"],
        event["request_id"],
        event["attempt"],
        event["status"],
        event["disposition"],
        event.get("error_type"),
        event.get("error_message"),
        _ts(event["created_at"]),
        _ts(event["started_at"]),
        _ts(event["submitted_at"]),
        float(event["duration_ms"]),
        float(event["queue_wait_ms"]),
        event["worker_id"],
        event["topic"],
        event["partition"],
        event["offset"],
        event.get("endpoint"),
        event.get("model"),
        event.get("provider"),
        event.get("input_tokens") or 0,
        event.get("output_tokens") or 0,
        Decimal(event.get("cost_usd") or "0"),
        event.get("usage_source"),
        event.get("routing_rule"),
        event.get("rules_version"),
        [c["endpoint"] for c in calls],
        [c["provider"] for c in calls],
        [c["model"] for c in calls],
        [c["operation"] for c in calls],
        [c["status"] for c in calls],
        [c.get("error_type") or "" for c in calls],
        [c.get("input_tokens") or 0 for c in calls],
        [c.get("output_tokens") or 0 for c in calls],
        [Decimal(c.get("cost_usd") or "0") for c in calls],
        [float(c["duration_ms"]) for c in calls],
        [float(c["ttft_ms"]) if c.get("ttft_ms") is not None else 0.0 for c in calls],
        [c.get("rule") or "" for c in calls],
        event.get("trace_id") or "",
        event.get("span_id") or "",
        event.get("input"),
        event.get("output"),
        trace_partition,
        trace_offset,
    ]


# -- what the queries return (JSON-ready via dataclasses.asdict) ---------------------------


@dataclasses.dataclass
class StepAttempt:
    """One attempt of a step, as stored."""

    step_name: str
    attempt: int
    status: str
    disposition: str
    error_type: str | None
    error_message: str | None
    started_at: int
    """Epoch milliseconds, as are the other ``*_at`` fields."""
    created_at: int
    queue_wait_ms: float
    duration_ms: float
    worker_id: str
    model: str | None
    provider: str | None
    endpoint: str | None
    routing_rule: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: str
    trace_id: str
    span_id: str
    input: str | None = None
    output: str | None = None

    @property
    def ready_at(self) -> float:
        """When the attempt's input was ready to be picked up (epoch ms)."""
        return self.started_at - self.queue_wait_ms


@dataclasses.dataclass
class StepTime:
    """Where one step's time went in one request, beside the step's usual (p50) time."""

    step_name: str
    attempts: int
    status: str
    start_ms: float
    """Offset from the request's submission to when the step's first input was ready."""
    total_ms: float
    """From that moment to the end of the step's last attempt."""
    queue_wait_ms: float
    """Of the last attempt: time its input sat in Kafka."""
    processing_ms: float
    """Of the last attempt."""
    retry_ms: float
    """Before the last attempt: failed attempts and retry back-off."""
    p50_ms: float | None
    """The step's median ``total_ms`` over the baseline window (``None``: no baseline)."""
    excess_ms: float | None
    model: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: str
    error_types: list[str]

    @property
    def ratio(self) -> float | None:
        if self.p50_ms is None or self.p50_ms <= 0:
            return None
        return self.total_ms / self.p50_ms

    @property
    def cause(self) -> str:
        """The largest part of the step's time: processing, queue wait or retries."""
        parts = {
            "processing": self.processing_ms,
            "queue wait": self.queue_wait_ms,
            "retries": self.retry_ms,
        }
        return max(parts, key=lambda k: parts[k])


@dataclasses.dataclass
class Timeline:
    """One request's path through its pipeline, step by step."""

    request_id: str
    pipeline_id: str
    submitted_at: int
    total_ms: float
    """Submission to the end of the last step attempt."""
    pipeline_p50_ms: float | None
    """Median ``total_ms`` of the pipeline's requests over the baseline window."""
    baseline_requests: int
    steps: list[StepTime]
    attempts: list[StepAttempt]
    slow_step: str | None
    """The step furthest above its own p50 (``None`` when none is above it)."""

    def verdict(self) -> str:
        """One sentence naming the step that made the request slow, and why."""
        head = f"request {self.request_id} took {_fmt_ms(self.total_ms)}"
        if self.pipeline_p50_ms is not None:
            head += f" (p50 of {self.pipeline_id}: {_fmt_ms(self.pipeline_p50_ms)})"
        step = next((s for s in self.steps if s.step_name == self.slow_step), None)
        if step is None or step.p50_ms is None:
            return head + "; no step was slower than its usual (p50) time"
        ratio = step.ratio
        times = f", {ratio:.1f}x" if ratio is not None else ""
        detail = {
            "processing": f"processing took {_fmt_ms(step.processing_ms)}",
            "queue wait": f"its input waited {_fmt_ms(step.queue_wait_ms)} in Kafka",
            "retries": (
                f"{step.attempts - 1} failed attempt(s)"
                + (f" ({', '.join(step.error_types)})" if step.error_types else "")
                + f" cost {_fmt_ms(step.retry_ms)}"
            ),
        }[step.cause]
        return (
            f"{head}; slow step: {step.step_name} took {_fmt_ms(step.total_ms)} against its p50"
            f" of {_fmt_ms(step.p50_ms)} (+{_fmt_ms(step.excess_ms or 0.0)}{times}): {detail}"
        )

    def to_dict(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        body["verdict"] = self.verdict()
        for step, raw in zip(self.steps, body["steps"], strict=True):
            raw["ratio"] = step.ratio
            raw["cause"] = step.cause
        return body

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Timeline:
        fields = {f.name for f in dataclasses.fields(StepTime)}
        return cls(
            request_id=body["request_id"],
            pipeline_id=body["pipeline_id"],
            submitted_at=body["submitted_at"],
            total_ms=body["total_ms"],
            pipeline_p50_ms=body["pipeline_p50_ms"],
            baseline_requests=body["baseline_requests"],
            steps=[StepTime(**{k: v for k, v in s.items() if k in fields}) for s in body["steps"]],
            attempts=[StepAttempt(**a) for a in body["attempts"]],
            slow_step=body["slow_step"],
        )


@dataclasses.dataclass
class StepStats:
    pipeline_id: str
    step_name: str
    attempts: int
    failures: int
    requests: int
    duration_p50_ms: float
    duration_p95_ms: float
    duration_p99_ms: float
    queue_wait_p50_ms: float
    queue_wait_p95_ms: float
    queue_wait_p99_ms: float


@dataclasses.dataclass
class FailureCount:
    pipeline_id: str
    step_name: str
    error_type: str
    count: int
    avg_duration_ms: float


@dataclasses.dataclass
class CostByModel:
    pipeline_id: str
    model: str
    provider: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: str


@dataclasses.dataclass
class Stats:
    """Latency percentiles per step, failures by error type, cost by model, over a window."""

    since_ms: int
    pipeline: str | None
    steps: list[StepStats]
    failures: list[FailureCount]
    cost: list[CostByModel]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Stats:
        return cls(
            since_ms=body["since_ms"],
            pipeline=body["pipeline"],
            steps=[StepStats(**s) for s in body["steps"]],
            failures=[FailureCount(**f) for f in body["failures"]],
            cost=[CostByModel(**c) for c in body["cost"]],
        )


@dataclasses.dataclass
class LatencyPoint:
    """One minute (or bucket) of one step: percentiles from the per-minute aggregates."""

    minute: int
    """Epoch milliseconds of the bucket's start."""
    pipeline_id: str
    step_name: str
    attempts: int
    failures: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclasses.dataclass
class SlowRequest:
    request_id: str
    pipeline_id: str
    submitted_at: int
    total_ms: float
    attempts: int
    failures: int
    cost_usd: str


def _fmt_ms(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def _f(value: Any) -> float:
    """A float from a query value; NaN (quantiles of nothing) becomes 0."""
    out = float(value) if value is not None else 0.0
    return 0.0 if out != out else out


# -- the store ----------------------------------------------------------------------------


class TraceStore:
    """``pipeline_events`` in one ClickHouse database, through clickhouse-connect.

    Thread-safe: calls are serialized (the embedded engine's client is not
    meant for concurrent use, and the sink calls it from a worker thread).
    """

    def __init__(self, client: Any, *, database: str, ttl_days: int, dsn: str) -> None:
        self._client = client
        self.database = database
        self.ttl_days = ttl_days
        self.dsn = mask_url(dsn)
        """Where the store is, for messages: its DSN with any password masked."""
        self._lock = threading.Lock()

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def connect(
        cls, settings: WeirSettings, *, dsn: str | None = None, create_schema: bool = True
    ) -> TraceStore:
        """Open the store named by the settings (or ``dsn``) and create what is missing.

        ``create_schema=False`` opens it for reading only: nothing is created or
        altered (web pages and commands read; the sink and the worker create),
        and a store without the tables raises ``TraceSchemaMissingError``.
        Raises ``TraceStoreError`` when it cannot be reached or opened.
        """
        import clickhouse_connect
        from clickhouse_connect.driver.exceptions import ClickHouseError

        dsn = dsn or settings.trace_store_dsn.get_secret_value()
        if dsn.startswith("chdb://"):
            Path(dsn[len("chdb://") :]).mkdir(parents=True, exist_ok=True)
        try:
            client = clickhouse_connect.get_client(dsn=dsn)
        except (ClickHouseError, OSError) as exc:
            raise TraceStoreError(_unreachable(dsn, exc)) from exc
        store = cls(
            client, database=settings.clickhouse_database, ttl_days=settings.trace_ttl_days, dsn=dsn
        )
        try:
            if create_schema:
                store.ensure_schema()
            else:
                store.check_schema()
        except TraceStoreError:
            store.close()
            raise
        return store

    def check_schema(self) -> None:
        """``TraceSchemaMissingError`` unless the tables exist; reads ``system.tables`` only."""
        found = {
            str(row[0])
            for row in self._query(
                "SELECT name FROM system.tables WHERE database = {db:String}", db=self.database
            )
        }
        missing = sorted({EVENTS_TABLE, LATENCY_TABLE} - found)
        if missing:
            raise TraceSchemaMissingError(
                f"the trace store {self.dsn} has no {', '.join(missing)} in database"
                f" {self.database!r} yet: `weir sink` (or a starting `weir worker`) creates it;"
                " pages and queries never do"
            )
        self._client.database = self.database

    def ensure_schema(self) -> None:
        """Create the database, table, aggregate table and view if missing; apply the TTL."""
        create_db, *tables = _ddl(self.database, self.ttl_days)
        self._command(create_db)
        # Unqualified names (ad-hoc SQL such as the dashboards') resolve to our database.
        self._client.database = self.database
        for statement in tables:
            self._command(statement)
        engine = self._query(
            "SELECT engine_full FROM system.tables"
            " WHERE database = {db:String} AND name = {t:String}",
            db=self.database,
            t=EVENTS_TABLE,
        )
        wanted = f"toIntervalDay({self.ttl_days})"
        if engine and wanted not in str(engine[0][0]):
            log.info("setting the TTL of %s to %d days", EVENTS_TABLE, self.ttl_days)
            for table, column in (
                (EVENTS_TABLE, "toDateTime(created_at)"),
                (LATENCY_TABLE, "minute"),
            ):
                self._command(
                    f"ALTER TABLE `{self.database}`.{table}"
                    f" MODIFY TTL {column} + INTERVAL {self.ttl_days} DAY"
                )

    def close(self) -> None:
        with self._lock:
            try:
                self._client.close()
            except Exception as exc:  # closing must not hide the error that led here
                log.debug("closing the trace store: %s", exc)

    # -- low level ---------------------------------------------------------------------------

    def _command(self, sql: str) -> None:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        with self._lock:
            try:
                self._client.command(sql)
            except (ClickHouseError, OSError) as exc:
                raise TraceStoreError(_unreachable(self.dsn, exc)) from exc

    def _query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        with self._lock:
            try:
                result = self._client.query(sql, parameters=params or None)
            except (ClickHouseError, OSError) as exc:
                raise TraceStoreError(_unreachable(self.dsn, exc)) from exc
        return list(result.result_rows)

    def query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Run any SELECT in the store's database (``{name:Type}`` parameters)."""
        return self._query(sql, **params)

    def select(self, sql: str) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
        """Run one read-only statement as given (``weir sql``): column names, types, rows.

        ``readonly=2`` refuses writes and DDL, so the sink's HTTP API can serve
        it; a statement ClickHouse rejects is a ``TraceQueryError``.
        """
        from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError

        with self._lock:
            try:
                result = self._client.query(sql, settings={"readonly": 2})
            except DatabaseError as exc:
                raise TraceQueryError(_refused(exc)) from exc
            except (ClickHouseError, OSError) as exc:
                raise TraceStoreError(_unreachable(self.dsn, exc)) from exc
        types = [getattr(t, "name", str(t)) for t in result.column_types]
        return list(result.column_names), types, list(result.result_rows)

    def ping(self) -> None:
        """Raise ``TraceStoreError`` unless the store answers."""
        self._query("SELECT 1")

    # -- writing -----------------------------------------------------------------------------

    def insert(self, rows: Sequence[Sequence[Any]], *, token: str) -> None:
        """Insert ``rows`` (``event_columns()`` order) as one block.

        ``token`` is ClickHouse's ``insert_deduplication_token``: inserting the
        same rows again with the same token (a retry after an answer was lost)
        stores them once, in the table and in the aggregates.
        """
        from clickhouse_connect.driver.exceptions import ClickHouseError

        if not rows:
            return
        columns = [list(col) for col in zip(*rows, strict=True)]
        with self._lock:
            try:
                self._client.insert(
                    f"`{self.database}`.{EVENTS_TABLE}",
                    columns,
                    column_names=list(_COLUMNS),
                    column_oriented=True,
                    settings={
                        "insert_deduplication_token": token,
                        "insert_deduplicate": 1,
                        "deduplicate_blocks_in_dependent_materialized_views": 1,
                    },
                )
            except (ClickHouseError, OSError) as exc:
                raise TraceStoreError(_unreachable(self.dsn, exc)) from exc

    def progress(self, topic: Iterable[int] | None = None) -> dict[int, int]:
        """Per trace-topic partition, the next offset not yet stored (highest stored + 1)."""
        rows = self._query(
            f"SELECT trace_partition, max(trace_offset) FROM {EVENTS_TABLE}"
            " GROUP BY trace_partition"
        )
        wanted = None if topic is None else set(topic)
        return {int(p): int(o) + 1 for p, o in rows if wanted is None or p in wanted}

    # -- reading -----------------------------------------------------------------------------

    def timeline(self, request_id: str, *, baseline_s: float = 86400.0) -> Timeline:
        """The request's attempts and per-step times beside each step's p50.

        The baseline is the pipeline's requests that ended in the ``baseline_s``
        before this one ended.
        """
        rows = self._query(
            f"""
SELECT step_name, attempt, status, disposition, error_type, error_message, started_at,
       created_at, queue_wait_ms, duration_ms, worker_id, model, provider, endpoint,
       routing_rule, input_tokens, output_tokens, toString(cost_usd), trace_id, span_id,
       input, output, pipeline_id, submitted_at
FROM {EVENTS_TABLE}
WHERE request_id = {{rid:String}}
ORDER BY started_at, step_name, attempt
""",
            rid=request_id,
        )
        if not rows:
            raise RequestNotFoundError(
                f"no trace events for request {request_id!r} in {self.dsn}"
                f" (database {self.database}); is the sink running, and did the request pass"
                " through a worker with trace_events on?"
            )
        attempts = [
            StepAttempt(
                step_name=r[0],
                attempt=int(r[1]),
                status=r[2],
                disposition=r[3],
                error_type=r[4],
                error_message=r[5],
                started_at=_ms(r[6]),
                created_at=_ms(r[7]),
                queue_wait_ms=float(r[8]),
                duration_ms=float(r[9]),
                worker_id=r[10],
                model=r[11],
                provider=r[12],
                endpoint=r[13],
                routing_rule=r[14],
                input_tokens=int(r[15]),
                output_tokens=int(r[16]),
                cost_usd=_decimal_text(r[17]),
                trace_id=r[18],
                span_id=r[19],
                input=r[20],
                output=r[21],
            )
            for r in rows
        ]
        pipeline = rows[0][22]
        submitted = min(_ms(r[23]) for r in rows)
        ended = max(a.created_at for a in attempts)
        since, until = ended - int(baseline_s * 1000), ended
        baseline = self._query(
            f"""
SELECT step_name, quantileExact(0.5)(t), count()
FROM (
    SELECT request_id, step_name,
           max(toUnixTimestamp64Milli(created_at))
             - min(toUnixTimestamp64Milli(started_at) - queue_wait_ms) AS t
    FROM {EVENTS_TABLE}
    WHERE pipeline_id = {{p:String}}
      AND created_at BETWEEN fromUnixTimestamp64Milli({{since:Int64}}, 'UTC')
                         AND fromUnixTimestamp64Milli({{until:Int64}}, 'UTC')
    GROUP BY request_id, step_name
)
GROUP BY step_name
""",
            p=pipeline,
            since=since,
            until=until,
        )
        p50 = {r[0]: float(r[1]) for r in baseline}
        overall = self._query(
            f"""
SELECT quantileExact(0.5)(t), count()
FROM (
    SELECT request_id,
           max(toUnixTimestamp64Milli(created_at)) - min(toUnixTimestamp64Milli(submitted_at)) AS t
    FROM {EVENTS_TABLE}
    WHERE pipeline_id = {{p:String}}
      AND created_at BETWEEN fromUnixTimestamp64Milli({{since:Int64}}, 'UTC')
                         AND fromUnixTimestamp64Milli({{until:Int64}}, 'UTC')
    GROUP BY request_id
)
""",
            p=pipeline,
            since=since,
            until=until,
        )
        count = int(overall[0][1]) if overall else 0
        return build_timeline(
            request_id,
            pipeline,
            submitted,
            attempts,
            p50,
            pipeline_p50_ms=float(overall[0][0]) if count else None,
            baseline_requests=count,
        )

    def stats(self, *, since_ms: int, pipeline: str | None = None) -> Stats:
        """p50/p95/p99 per step, failures by error type and cost by model since ``since_ms``."""
        where = "created_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')"
        params: dict[str, Any] = {"since": since_ms}
        if pipeline is not None:
            where += " AND pipeline_id = {p:String}"
            params["p"] = pipeline
        steps = self._query(
            f"""
SELECT pipeline_id, step_name, count(), countIf(status = 'FAILURE'), uniqExact(request_id),
       quantilesExact({_QUANTILES})(duration_ms), quantilesExact({_QUANTILES})(queue_wait_ms)
FROM {EVENTS_TABLE} WHERE {where}
GROUP BY pipeline_id, step_name ORDER BY pipeline_id, step_name
""",
            **params,
        )
        failures = self._query(
            f"""
SELECT pipeline_id, step_name, error_type, count(), avg(duration_ms)
FROM {EVENTS_TABLE} WHERE {where} AND status = 'FAILURE'
GROUP BY pipeline_id, step_name, error_type ORDER BY count() DESC, pipeline_id, step_name
""",
            **params,
        )
        cost = self._query(
            f"""
SELECT pipeline_id, calls.model AS model, calls.provider AS provider, count(),
       sum(calls.input_tokens), sum(calls.output_tokens), toString(sum(calls.cost_usd))
FROM {EVENTS_TABLE} ARRAY JOIN calls WHERE {where}
GROUP BY pipeline_id, model, provider ORDER BY sum(calls.cost_usd) DESC, pipeline_id, model
""",
            **params,
        )
        return Stats(
            since_ms=since_ms,
            pipeline=pipeline,
            steps=[
                StepStats(
                    pipeline_id=r[0],
                    step_name=r[1],
                    attempts=int(r[2]),
                    failures=int(r[3]),
                    requests=int(r[4]),
                    duration_p50_ms=_f(r[5][0]),
                    duration_p95_ms=_f(r[5][1]),
                    duration_p99_ms=_f(r[5][2]),
                    queue_wait_p50_ms=_f(r[6][0]),
                    queue_wait_p95_ms=_f(r[6][1]),
                    queue_wait_p99_ms=_f(r[6][2]),
                )
                for r in steps
            ],
            failures=[
                FailureCount(r[0], r[1], r[2] or "unknown", int(r[3]), _f(r[4])) for r in failures
            ],
            cost=[
                CostByModel(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), _decimal_text(r[6]))
                for r in cost
            ],
        )

    def latency_series(
        self, *, since_ms: int, pipeline: str | None = None, bucket_minutes: int = 1
    ) -> list[LatencyPoint]:
        """Processing-time percentiles per step and time bucket, from the minute aggregates."""
        where = "minute >= toStartOfMinute(fromUnixTimestamp64Milli({since:Int64}, 'UTC'))"
        params: dict[str, Any] = {"since": since_ms, "bucket": max(1, bucket_minutes)}
        if pipeline is not None:
            where += " AND pipeline_id = {p:String}"
            params["p"] = pipeline
        rows = self._query(
            f"""
SELECT toStartOfInterval(minute, toIntervalMinute({{bucket:UInt32}})) AS bucket,
       pipeline_id, step_name, sum(attempts), sum(failures),
       quantilesTDigestMerge({_QUANTILES})(duration_q)
FROM {LATENCY_TABLE} WHERE {where}
GROUP BY bucket, pipeline_id, step_name ORDER BY bucket, pipeline_id, step_name
""",
            **params,
        )
        return [
            LatencyPoint(
                minute=_ms(r[0]),
                pipeline_id=r[1],
                step_name=r[2],
                attempts=int(r[3]),
                failures=int(r[4]),
                p50_ms=_f(r[5][0]),
                p95_ms=_f(r[5][1]),
                p99_ms=_f(r[5][2]),
            )
            for r in rows
        ]

    def slowest(
        self, *, since_ms: int, pipeline: str | None = None, limit: int = 20
    ) -> list[SlowRequest]:
        """The requests with the longest submission-to-last-step time since ``since_ms``."""
        where = "created_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')"
        params: dict[str, Any] = {"since": since_ms, "limit": limit}
        if pipeline is not None:
            where += " AND pipeline_id = {p:String}"
            params["p"] = pipeline
        rows = self._query(
            f"""
SELECT request_id, any(pipeline_id), min(toUnixTimestamp64Milli(submitted_at)) AS submitted,
       max(toUnixTimestamp64Milli(created_at)) - submitted AS total, count(),
       countIf(status = 'FAILURE'), toString(sum(cost_usd))
FROM {EVENTS_TABLE} WHERE {where} AND request_id != ''
GROUP BY request_id ORDER BY total DESC, request_id LIMIT {{limit:UInt32}}
""",
            **params,
        )
        return [
            SlowRequest(
                r[0], r[1], int(r[2]), float(r[3]), int(r[4]), int(r[5]), _decimal_text(r[6])
            )
            for r in rows
        ]


def build_timeline(
    request_id: str,
    pipeline: str,
    submitted_at: int,
    attempts: list[StepAttempt],
    p50: Mapping[str, float],
    *,
    pipeline_p50_ms: float | None,
    baseline_requests: int,
) -> Timeline:
    """Group a request's attempts by step and find the step furthest above its p50."""
    by_step: dict[str, list[StepAttempt]] = {}
    for a in sorted(attempts, key=lambda a: (a.started_at, a.attempt)):
        by_step.setdefault(a.step_name, []).append(a)
    steps = []
    for name, tries in by_step.items():
        last = tries[-1]
        ready = min(a.ready_at for a in tries)
        total = max(a.created_at for a in tries) - ready
        usual = p50.get(name)
        tokens_in = sum(a.input_tokens for a in tries)
        tokens_out = sum(a.output_tokens for a in tries)
        steps.append(
            StepTime(
                step_name=name,
                attempts=len(tries),
                status=last.status,
                start_ms=max(0.0, ready - submitted_at),
                total_ms=total,
                queue_wait_ms=last.queue_wait_ms,
                processing_ms=last.duration_ms,
                retry_ms=max(0.0, last.ready_at - ready),
                p50_ms=usual,
                excess_ms=None if usual is None else total - usual,
                model=next((a.model for a in reversed(tries) if a.model), None),
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                cost_usd=_decimal_text(sum((Decimal(a.cost_usd) for a in tries), Decimal(0))),
                error_types=sorted({a.error_type for a in tries if a.error_type}),
            )
        )
    ended = max((a.created_at for a in attempts), default=submitted_at)
    above = [s for s in steps if s.excess_ms is not None and s.excess_ms > 0]
    slow = max(above, key=lambda s: s.excess_ms or 0.0).step_name if above else None
    return Timeline(
        request_id=request_id,
        pipeline_id=pipeline,
        submitted_at=submitted_at,
        total_ms=float(ended - submitted_at),
        pipeline_p50_ms=pipeline_p50_ms,
        baseline_requests=baseline_requests,
        steps=steps,
        attempts=attempts,
        slow_step=slow,
    )


def _decimal_text(value: Any) -> str:
    """Exact decimal text without trailing zeros ("0.0021", "0")."""
    number = Decimal(str(value))
    text = format(number.normalize(), "f")
    return "0" if number == 0 else text


def _refused(exc: BaseException) -> str:
    """ClickHouse's reason for refusing a statement, without the driver's additions."""
    text = str(exc).strip()
    code = re.search(r"\(([A-Z_]+)\)\s*$", text)
    if code and code[1] == "READONLY":
        return "weir sql only reads: the trace store is written by `weir sink` alone"
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"the query failed: {first[:500]}" + (f" ({code[1]})" if code else "")


def _unreachable(dsn: str, exc: BaseException) -> str:
    # These messages reach logs and HTTP responses (the dashboard): the DSN, and any
    # URL the client library quotes in its error, are shown without their passwords.
    dsn = mask_url(dsn)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = mask_url(text)
    if dsn.startswith("chdb://") and (
        "EmbeddedServer" in text or "Unable to open the chdb engine" in text
    ):
        return (
            f"the embedded trace store {dsn} cannot be opened: another process holds it (a"
            " data directory can be open in one process at a time). If it is a `weir sink`"
            " started before this one announced itself, restart it; otherwise wait for the"
            " other weir command to finish"
        )
    return f"trace store {dsn} is unavailable: {text[:500]}"


def dumps(value: Any) -> str:
    """JSON for query results (dataclasses, Decimals)."""

    def default(o: Any) -> Any:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        if isinstance(o, Decimal):
            return str(o)
        raise TypeError(f"{type(o).__name__} is not JSON serializable")

    return json.dumps(value, default=default)


# -- reaching the store from commands and web pages ------------------------------------------


class TraceQueries(Protocol):
    """What commands and dashboards ask of a trace store (local or through a sink)."""

    def timeline(self, request_id: str, *, baseline_s: float = 86400.0) -> Timeline: ...

    def stats(self, *, since_ms: int, pipeline: str | None = None) -> Stats: ...

    def latency_series(
        self, *, since_ms: int, pipeline: str | None = None, bucket_minutes: int = 1
    ) -> list[LatencyPoint]: ...

    def slowest(
        self, *, since_ms: int, pipeline: str | None = None, limit: int = 20
    ) -> list[SlowRequest]: ...

    def close(self) -> None: ...


class RemoteTraceStore:
    """The queries of a store held open by a running ``weir sink``, over its HTTP API."""

    def __init__(
        self, url: str, *, timeout_s: float = 30.0, token: SecretStr | None = None
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.dsn = self.url
        # The sink's server asks for the same bearer token as a worker's (``web_token``).
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)

    def _get(self, path: str, **params: Any) -> Any:
        import httpx

        try:
            response = self._http.get(
                path, params={k: v for k, v in params.items() if v is not None}
            )
        except httpx.HTTPError as exc:
            raise TraceStoreError(f"the sink at {self.url} did not answer: {exc}") from exc
        if response.status_code == 404 and path.startswith("/api/traces/requests/"):
            raise RequestNotFoundError(response.json().get("error", response.text))
        if response.status_code != 200:
            raise TraceStoreError(
                f"the sink at {self.url} answered {response.status_code}: {response.text[:300]}"
            )
        return response.json()

    def timeline(self, request_id: str, *, baseline_s: float = 86400.0) -> Timeline:
        from urllib.parse import quote

        body = self._get(f"/api/traces/requests/{quote(request_id, safe='')}", baseline=baseline_s)
        return Timeline.from_dict(body)

    def stats(self, *, since_ms: int, pipeline: str | None = None) -> Stats:
        return Stats.from_dict(self._get("/api/traces/stats", since_ms=since_ms, pipeline=pipeline))

    def latency_series(
        self, *, since_ms: int, pipeline: str | None = None, bucket_minutes: int = 1
    ) -> list[LatencyPoint]:
        body = self._get(
            "/api/traces/latency", since_ms=since_ms, pipeline=pipeline, bucket=bucket_minutes
        )
        return [LatencyPoint(**p) for p in body]

    def slowest(
        self, *, since_ms: int, pipeline: str | None = None, limit: int = 20
    ) -> list[SlowRequest]:
        body = self._get("/api/traces/slowest", since_ms=since_ms, pipeline=pipeline, limit=limit)
        return [SlowRequest(**r) for r in body]

    def close(self) -> None:
        self._http.close()


def open_queries(settings: WeirSettings) -> TraceQueries:
    """The trace store for reading: a ClickHouse server directly; an embedded store
    directly, or through the running sink that holds it open."""
    status = sink_status(settings)
    if status.url is not None:
        token = None
        if settings.web_token is not None:
            from weir.core.secrets import SecretResolver

            token = SecretResolver(settings).resolve_blocking(settings.web_token.get_secret_value())
        return RemoteTraceStore(status.url, token=token)
    check_store_free(settings, status)
    try:
        return TraceStore.connect(settings, create_schema=False)
    except TraceSchemaMissingError as exc:
        raise TraceSchemaMissingError(f"{exc}; {empty_store_hint(settings)}") from exc


_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_window(text: str) -> float:
    """Seconds in a window such as ``90s``, ``15m``, ``1h``, ``7d`` (bare numbers: seconds).

    >>> parse_window("1h"), parse_window("7d"), parse_window("30")
    (3600.0, 604800.0, 30.0)
    """
    match = _WINDOW.match(text)
    if not match or float(match[1]) <= 0:
        raise ValueError(f"{text!r} is not a time window: use e.g. 90s, 15m, 1h, 7d")
    return float(match[1]) * _UNIT_S[match[2] or "s"]
