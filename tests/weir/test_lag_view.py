"""The dashboard's lag view: a real worker whose step is held, its real HTTP server."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from playwright.async_api import async_playwright

from tests.weir.test_dashboard import ARTIFACTS, CHROMIUM, FLAGS, HAVE_CHROMIUM
from weir.streams import Pipeline, WeirClient, Worker
from weir.topics.lag import group_members, lag_report, pipeline_lag
from weir.web import WebServer

pytestmark = pytest.mark.kafka


async def test_the_worker_dashboard_shows_lag_per_step_and_partition_as_weir_lag_does(
    kafka, pipeline_name
):
    release = asyncio.Event()
    p = Pipeline(pipeline_name)

    @p.step()
    async def held(n: int) -> int:
        await release.wait()
        return n

    settings = kafka.model_copy(update={"web_port": 0})
    async with (
        Worker(p, settings) as worker,
        WeirClient(kafka) as client,
        WebServer(settings, worker) as web,
        httpx.AsyncClient(base_url=web.url, timeout=30) as http,
    ):
        ids = await client.submit_many(p.name, [{"n": i} for i in range(120)])
        await asyncio.sleep(3 * kafka.commit_interval_s)
        shown = (await http.get("/api/lag")).json()
        rows = await pipeline_lag(kafka, p.name)
        # The same numbers as `weir lag --json` (which prints lag_report of the same read).
        assert shown == lag_report(p.name, rows, await group_members(kafka, p.name))
        assert shown["steps"]["requests"] == 120 and shown["workers"] == 1
        assert {r["partition"] for r in shown["partitions"] if r["step"] == "requests"} == set(
            range(kafka.partitions)
        )
        page = await http.get("/dashboard/lag")
        assert page.status_code == 200
        assert re.search(r"<b id=total>(\d+)</b>", page.text).group(1) == str(shown["total"])  # type: ignore[union-attr]
        # One row per partition, each with its own lag.
        table = page.text.split("<table id=partitions>", 1)[1]
        cells = re.findall(
            r"<tr><td>requests</td><td>[^<]+</td><td>(\d+)</td>.*?"
            r'<td class="lag">([\d,]+)</td></tr>',
            table,
        )
        by_partition = {
            r["partition"]: r["lag"] for r in shown["partitions"] if r["step"] == "requests"
        }
        assert {int(p): int(lag.replace(",", "")) for p, lag in cells} == by_partition
        # In a browser, as the dashboard's other pages are checked: the same rows.
        assert HAVE_CHROMIUM, "Debian's chromium is needed: run `make deps`"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                tab = await browser.new_page()
                await tab.goto(f"{web.url}/dashboard/lag")
                rows = tab.locator("#partitions tr")
                shown_rows = [
                    [c.strip() for c in (await rows.nth(i).inner_text()).split("\t")]
                    for i in range(1, await rows.count())
                ]
                ARTIFACTS.mkdir(exist_ok=True)
                await tab.screenshot(path=str(ARTIFACTS / "dashboard-lag.png"), full_page=True)
            finally:
                await browser.close()
        assert len(shown_rows) == len(shown["partitions"])
        assert {(r[0], int(r[2]), int(r[5].replace(",", ""))) for r in shown_rows} == {
            (r["step"], r["partition"], r["lag"]) for r in shown["partitions"]
        }
        # Another pipeline by name; one without topics is a clear 404.
        missing = await http.get("/api/lag", params={"pipeline": "no-such-pipeline-here"})
        assert missing.status_code == 404
        assert missing.json()["error_type"] == "unknown_pipeline"
        release.set()
        await client.wait_for(p.name, ids, timeout=120)
        for _ in range(100):
            done = (await http.get("/api/lag")).json()
            if done["total"] == 0:
                break
            await asyncio.sleep(0.3)
        assert done["total"] == 0, done


async def test_a_server_without_a_worker_asks_which_pipeline(kafka):
    settings = kafka.model_copy(update={"web_port": 0})
    async with WebServer(settings) as web, httpx.AsyncClient(base_url=web.url) as http:
        response = await http.get("/api/lag")
    assert response.status_code == 400
    assert "?pipeline=" in response.json()["error"]
