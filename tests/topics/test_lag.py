"""Group-wide lag: real broker, a real worker whose step is held, the real CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from tests.conftest import worker_env
from weir.streams import Pipeline, WeirClient, Worker
from weir.topics.lag import pipeline_lag

pytestmark = pytest.mark.kafka


async def test_work_held_by_a_step_is_lag_until_it_is_done(kafka, pipeline_name, repo_root):
    release = asyncio.Event()
    p = Pipeline(pipeline_name)

    @p.step()
    async def held(n: int) -> int:
        await release.wait()
        return n

    @p.step(depends_on=[held])
    def after(held: int) -> int:
        return held + 1

    async with Worker(p, kafka), WeirClient(kafka) as client:
        ids = await client.submit_many(p.name, [{"n": i} for i in range(200)])
        await asyncio.sleep(3 * kafka.commit_interval_s)
        rows = await pipeline_lag(kafka, p.name)
        by_step = {s: sum(r.lag for r in rows if r.step == s) for s in {r.step for r in rows}}
        # Nothing of the held root step is done, so nothing of the requests is committed.
        assert by_step["requests"] == 200
        assert sum(r.end for r in rows if r.step == "requests") == 200
        assert by_step.get("after", 0) == 0
        shown = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "weir", "lag", p.name, "--json"],
            cwd=repo_root,
            env=worker_env(kafka),
            capture_output=True,
            text=True,
        )
        assert shown.returncode == 0, shown.stderr
        body = json.loads(shown.stdout)
        assert body["steps"]["requests"] == 200 and body["total"] >= 200
        assert body["workers"] == 1
        assert {r["partition"] for r in body["partitions"] if r["step"] == "requests"} == set(
            range(kafka.partitions)
        )
        release.set()
        await client.wait_for(p.name, ids, timeout=120)
        for _ in range(100):
            rows = await pipeline_lag(kafka, p.name)
            if sum(r.lag for r in rows) == 0:
                break
            await asyncio.sleep(0.3)
        assert sum(r.lag for r in rows) == 0, rows


async def test_an_unknown_pipeline_has_no_lag_rows(kafka):
    assert await pipeline_lag(kafka, "no-such-pipeline-here") == []
