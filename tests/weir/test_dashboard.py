"""The dashboard in headless Chromium, against a populated store; screenshots kept as artifacts.

Needs Debian's ``chromium`` (``make deps`` installs it) and the ``playwright``
Python package, which drives that browser (no browser download).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright

from tests._sink import free_port
from tests.traces.test_store import STEPS, rows, synthetic_events
from weir.core.config import load_settings
from weir.traces import TraceStore
from weir.web import WebServer

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
# Playwright adds --headless and a fresh temporary --user-data-dir itself.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[str]:
    """A web server (no worker) over an embedded store holding two pipelines' events."""
    settings = load_settings(
        clickhouse_dsn=f"chdb://{tmp_path / 'store'}", web_port=free_port(), home=tmp_path
    )
    store = TraceStore.connect(settings)
    now = int(time.time() * 1000)
    store.insert(rows(synthetic_events("support", 400, now_ms=now)), token="a")
    store.insert(rows(synthetic_events("embed", 150, now_ms=now, seed=3), 10_000), token="b")
    store.close()  # the web server opens it per request, as a worker's does
    async with WebServer(settings) as web:
        yield web.url


async def test_the_dashboard_plots_latency_failures_and_cost_and_links_to_timelines(
    server: str,
) -> None:
    assert HAVE_CHROMIUM, "Debian's chromium is needed: run `make deps`"
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=FLAGS,
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            response = await page.goto(f"{server}/dashboard?since=6h")
            assert response is not None and response.status == 200
            await page.wait_for_selector("svg.plot")

            # One latency chart per pipeline step, each with p50/p95/p99 lines drawn.
            lines = page.locator("svg.plot.line")
            assert await lines.count() == 2 * len(STEPS)
            for i in range(await lines.count()):
                chart = lines.nth(i)
                assert int(await chart.get_attribute("data-points") or 0) > 3
                series = chart.locator("polyline.series")
                assert await series.count() == 3
                box = await series.first.bounding_box()
                assert box is not None and box["width"] > 50 and box["height"] > 0

            bars = page.locator("svg.plot.bar")
            assert await bars.count() == 2
            titles = [await bars.nth(i).get_attribute("aria-label") for i in range(2)]
            assert titles == ["failures by error type", "cost by model and pipeline"]
            for i in range(2):
                rects = bars.nth(i).locator("rect.series")
                assert await rects.count() >= 2
                box = await rects.first.bounding_box()
                assert box is not None and box["width"] > 10
            assert "model_timeout" in (await bars.nth(0).text_content() or "")
            assert "gpt-4o-mini · support" in (await bars.nth(1).text_content() or "")

            links = page.locator("#slowest a")
            assert await links.count() == 15
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

            # The slowest request's timeline: a bar per step, the slow one outlined.
            await links.first.click()
            await page.wait_for_selector("svg.plot.gantt")
            gantt = page.locator("svg.plot.gantt")
            assert int(await gantt.get_attribute("data-points") or 0) == len(STEPS)
            assert await gantt.locator("rect.series").count() >= len(STEPS)
            verdict = await page.locator(".verdict").inner_text()
            assert "took" in verdict
            await page.screenshot(path=str(ARTIFACTS / "request.png"), full_page=True)
        finally:
            await browser.close()


async def test_the_trace_api_answers_json_and_rejects_bad_windows(server: str) -> None:
    async with httpx.AsyncClient(base_url=server) as http:
        stats = await http.get("/api/traces/stats", params={"since": "6h", "pipeline": "embed"})
        assert stats.status_code == 200
        assert {s["step_name"] for s in stats.json()["steps"]} == set(STEPS)
        bad = await http.get("/api/traces/stats", params={"since": "yesterday"})
        assert bad.status_code == 400 and "time window" in bad.text
        missing = await http.get("/api/traces/requests/nope")
        assert missing.status_code == 404
        assert json.loads(missing.text)["error_type"] == "request_not_found"
        slowest = (await http.get("/api/traces/slowest", params={"limit": 3})).json()
        timeline = await http.get(f"/api/traces/requests/{slowest[0]['request_id']}")
        assert timeline.status_code == 200
        assert timeline.json()["total_ms"] == slowest[0]["total_ms"]
