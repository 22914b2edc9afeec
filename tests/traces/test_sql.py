"""``run_sql`` on the embedded store: the README's queries as written, read-only, plain values."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.traces.test_store import synthetic_events
from weir.core.config import WeirSettings, load_settings
from weir.core.errors import TraceQueryError
from weir.schemas.messages import TraceEvent
from weir.traces import TraceStore, event_row
from weir.traces.sql import run_sql

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_queries() -> list[str]:
    section = README.read_text().split("### SQL on the trace store", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


@pytest.fixture
def filled(tmp_path: Path) -> WeirSettings:
    settings = load_settings(clickhouse_dsn=f"chdb://{tmp_path / 'store'}")
    store = TraceStore.connect(settings)
    try:
        events = synthetic_events("support", 60, now_ms=int(time.time() * 1000))
        rows = [event_row(TraceEvent.decode(e.encode()), 0, n) for n, e in enumerate(events)]
        store.insert(rows, token="t-1")
    finally:
        store.close()
    return settings


def test_the_readme_queries_run_as_written(filled: WeirSettings) -> None:
    seed, p95, cost = readme_queries()
    timeouts = run_sql(filled, seed)
    assert timeouts.columns == ["step_name", "AVG(duration_ms)", "COUNT()"]
    assert [r[0] for r in timeouts.rows] == ["generate"]

    latency = run_sql(filled, p95).records()
    assert {r["step_name"] for r in latency} == {"retrieve", "generate", "deliver"}
    assert all(r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] for r in latency)

    by_model = run_sql(filled, cost).records()
    assert {r["llm"] for r in by_model} == {"gpt-4o-mini", "haiku"}
    assert all(isinstance(r["usd"], str) and r["n_calls"] > 0 for r in by_model)  # exact text


def test_statements_run_read_only_and_refusals_are_query_errors(filled: WeirSettings) -> None:
    with pytest.raises(TraceQueryError, match="only reads"):
        run_sql(filled, "DROP TABLE pipeline_events")
    with pytest.raises(TraceQueryError, match="SYNTAX_ERROR"):
        run_sql(filled, "SELEC 1")
    assert run_sql(filled, "SELECT count() FROM pipeline_events").rows[0][0] > 0


def test_values_come_back_plain(filled: WeirSettings) -> None:
    result = run_sql(
        filled,
        "SELECT avg(duration_ms) AS nothing, max(created_at) AS last, sum(cost_usd) AS cost"
        " FROM pipeline_events WHERE step_name = 'no-such-step'",
    )
    nothing, last, cost = result.rows[0]
    assert nothing is None  # NaN is no JSON
    assert isinstance(last, str) and isinstance(cost, str)
    assert result.store_empty is None  # a row came back: not asked

    empty = run_sql(filled, "SELECT 1 FROM pipeline_events WHERE step_name = 'no-such-step'")
    assert empty.rows == [] and empty.store_empty is False
