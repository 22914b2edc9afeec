"""The trace store and its sink: step-attempt events from the trace topic into ClickHouse,
and the queries commands and dashboards read back.

``ClickHouseSink`` (``weir sink``) inserts the trace topic's events into
``pipeline_events``, each once; ``TraceStore`` opens the store (embedded chDB
or a ClickHouse server), ``open_queries`` reaches it directly or through the
running sink, and ``run_sql`` runs ad-hoc read-only SQL (``weir sql``).

>>> from weir.traces import parse_window
>>> parse_window("15m")
900.0
"""

from weir.traces.clickhouse_sink import ClickHouseSink, SinkStats
from weir.traces.queries import TraceQueries, build_timeline
from weir.traces.remote import RemoteTraceStore, open_queries
from weir.traces.results import (
    CostByModel,
    FailureCount,
    LatencyPoint,
    SlowRequest,
    Stats,
    StepAttempt,
    StepStats,
    StepTime,
    Timeline,
    dumps,
)
from weir.traces.rows import event_row
from weir.traces.schema import EVENTS_TABLE, LATENCY_TABLE, event_columns
from weir.traces.sink_status import (
    SinkStatus,
    empty_store_hint,
    running_sink_url,
    sink_file,
    sink_status,
)
from weir.traces.sql import SqlResult, run_sql
from weir.traces.store import TraceStore
from weir.traces.window import parse_window

__all__ = [
    "EVENTS_TABLE",
    "LATENCY_TABLE",
    "ClickHouseSink",
    "CostByModel",
    "FailureCount",
    "LatencyPoint",
    "RemoteTraceStore",
    "SinkStats",
    "SinkStatus",
    "SlowRequest",
    "SqlResult",
    "Stats",
    "StepAttempt",
    "StepStats",
    "StepTime",
    "Timeline",
    "TraceQueries",
    "TraceStore",
    "build_timeline",
    "dumps",
    "empty_store_hint",
    "event_columns",
    "event_row",
    "open_queries",
    "parse_window",
    "run_sql",
    "running_sink_url",
    "sink_file",
    "sink_status",
]
