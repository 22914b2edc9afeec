"""Ad-hoc SQL on the trace store: what ``weir sql`` runs, locally or through the sink.

Statements run in the store's database (``clickhouse_database``, ``weir`` by
default), so ``FROM pipeline_events`` needs no prefix and the seed's query runs
as written.  They run read-only (ClickHouse's ``readonly=2``): the store is
written by the sink alone.

The embedded store can be open in one process at a time: while a ``weir sink``
holds it, the statement goes to the sink's ``POST /api/traces/sql``; otherwise
(or with a ClickHouse server) it runs here.  Values come back as JSON-ready
plain values either way (decimals and times as text, NaN as null), so a query
prints the same through the sink as directly.

>>> plain_value(float("nan")), plain_value(__import__("decimal").Decimal("0.10"))
(None, '0.10')
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from weir.core.config import WeirSettings
from weir.core.errors import TraceQueryError, TraceStoreError
from weir.traces.schema import EVENTS_TABLE
from weir.traces.sink_status import check_store_free, sink_status
from weir.traces.store import TraceStore

__all__ = ["SqlResult", "plain_value", "run_sql", "run_sql_here"]

SQL_PATH = "/api/traces/sql"


@dataclass(frozen=True)
class SqlResult:
    """The answer to one statement."""

    columns: list[str]
    types: list[str]
    """ClickHouse type names (``UInt64``, ``Float64``, ``LowCardinality(String)`` ...)."""
    rows: list[list[Any]]
    """Plain values: numbers, text, booleans, ``None``, lists and objects of them."""
    store_empty: bool | None = None
    """With no rows: whether ``pipeline_events`` holds nothing at all (else not asked)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "types": self.types,
            "rows": self.rows,
            "store_empty": self.store_empty,
        }

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> SqlResult:
        return cls(
            list(body["columns"]),
            list(body["types"]),
            [list(r) for r in body["rows"]],
            body.get("store_empty"),
        )

    def records(self) -> list[dict[str, Any]]:
        """One mapping per row, column name to value (duplicate names: the last wins)."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def plain_value(value: Any) -> Any:
    """A query value as JSON can hold it without loss of meaning."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # avg of nothing is NaN
    if isinstance(value, Decimal):
        return str(value)  # exact: costs are Decimal(18, 12)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # the engine hands back naive UTC
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat(sep=" ", timespec="milliseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain_value(v) for v in value]
    return str(value)


def run_sql_here(settings: WeirSettings, sql: str) -> SqlResult:
    """Open the store in this process, run ``sql``, close it (the sink's side of the API)."""
    store = TraceStore.connect(settings)
    try:
        return select(store, sql)
    finally:
        store.close()


def select(store: Any, sql: str) -> SqlResult:
    """``sql`` on an open ``TraceStore``, as plain values."""
    columns, types, rows = store.select(sql)
    empty = None
    if not rows:  # nothing found: say whether there is anything to find at all
        empty = not store.select(f"SELECT 1 FROM {EVENTS_TABLE} LIMIT 1")[2]
    return SqlResult(columns, types, [[plain_value(v) for v in row] for row in rows], empty)


def run_sql(settings: WeirSettings, sql: str, *, timeout_s: float = 60.0) -> SqlResult:
    """Run ``sql`` on the trace store: through the sink that holds it, else directly."""
    if not sql.strip():
        raise TraceQueryError("the query is empty")
    status = sink_status(settings)
    if status.url is not None:
        return _ask_sink(status.url, sql, timeout_s=timeout_s)
    check_store_free(settings, status)
    return run_sql_here(settings, sql)


def _ask_sink(url: str, sql: str, *, timeout_s: float) -> SqlResult:
    import httpx

    try:
        response = httpx.post(url.rstrip("/") + SQL_PATH, json={"query": sql}, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise TraceStoreError(f"the sink at {url} did not answer: {exc}") from exc
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code == 400 and body.get("error_type") == TraceQueryError.error_type:
        raise TraceQueryError(body.get("error", response.text))
    if response.status_code != 200 or not isinstance(body, dict):
        raise TraceStoreError(
            f"the sink at {url} answered {response.status_code}: {response.text[:300]}"
        )
    return SqlResult.from_dict(body)
