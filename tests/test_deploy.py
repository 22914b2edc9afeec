"""docker-compose.yml and the Grafana provisioning: valid; every panel's SQL runs on the store."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from tests.traces.test_store import rows, synthetic_events
from weir.core.config import load_settings
from weir.traces import TraceStore

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"


def test_compose_provisions_grafana_with_the_clickhouse_datasource() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "clickhouse", "worker", "sink", "grafana"} <= set(services)
    grafana = services["grafana"]
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]
    for volume in grafana["volumes"]:
        assert (ROOT / volume.split(":")[0]).exists(), volume
    assert services["sink"]["environment"]["WEIR_CLICKHOUSE_DSN"] == "http://clickhouse:8123"
    (source,) = yaml.safe_load((GRAFANA / "provisioning/datasources/clickhouse.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "grafana-clickhouse-datasource"
    assert source["jsonData"]["defaultDatabase"] == "weir"


def _grafana_sql(sql: str) -> str:
    """The query as the ClickHouse plugin would send it for the last 6 hours, all pipelines."""
    sql = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 >= now() - INTERVAL 6 HOUR", sql)
    sql = re.sub(r"\$__timeInterval\((\w+)\)", r"toStartOfInterval(\1, INTERVAL 1 MINUTE)", sql)
    return sql.replace("${pipeline:singlequote}", "'support', 'embed'")


def test_every_dashboard_panel_query_runs_on_the_store_and_returns_data(tmp_path: Path) -> None:
    dashboard = json.loads((GRAFANA / "dashboards" / "weir.json").read_text())
    panels = dashboard["panels"]
    assert {p["type"] for p in panels} == {"timeseries", "barchart", "table"}
    store = TraceStore.connect(load_settings(clickhouse_dsn=f"chdb://{tmp_path / 'store'}"))
    try:
        now = int(time.time() * 1000)
        store.insert(rows(synthetic_events("support", 200, now_ms=now)), token="a")
        store.insert(rows(synthetic_events("embed", 50, now_ms=now, seed=2), 5000), token="b")
        variable = dashboard["templating"]["list"][0]["query"]
        assert {r[0] for r in store.query(variable)} == {"embed", "support"}
        for panel in panels:
            (target,) = panel["targets"]
            result = store.query(_grafana_sql(target["rawSql"]))
            assert result, f"panel {panel['title']!r} returned nothing"
    finally:
        store.close()


@pytest.mark.parametrize("name", ["p50", "p95", "p99"])
def test_latency_panels_read_the_per_minute_quantile_states(name: str) -> None:
    dashboard = json.loads((GRAFANA / "dashboards" / "weir.json").read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"].startswith(name)]
    assert "pipeline_latency_1m" in panel["targets"][0]["rawSql"]
