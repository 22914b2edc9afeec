"""Review figures (escalated, time to answer, backlog) from a real review topic, and in
``weir stats --json``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from tests.conftest import worker_env
from tests.streams.test_review import _support
from weir.streams import WeirClient, Worker
from weir.streams.review import answer_review, read_reviews
from weir.streams.review_figures import review_figures


@pytest.mark.kafka
async def test_figures_count_answered_expired_and_open_reviews(kafka, pipeline_name, repo_root):
    settings = kafka.model_copy(update={"review_check_interval_s": 0.2})
    async with Worker(_support(pipeline_name), settings), WeirClient(settings) as client:
        auto = await client.submit(pipeline_name, {"text": "hello"})
        answered = await client.submit(pipeline_name, {"text": "refund one"})
        expiring = await client.submit(pipeline_name, {"text": "refund two", "deadline_s": 1.0})
        waiting = await client.submit(pipeline_name, {"text": "refund three"})
        async with asyncio.timeout(60):
            while len((await read_reviews(settings, pipeline_name)).reviews) < 3:
                await asyncio.sleep(0.2)
        await asyncio.sleep(0.3)  # a measurable wait before the answer
        await answer_review(settings, pipeline_name, answered, text="done", by="ada")
        for rid in (auto, answered, expiring):
            await client.result(rid, timeout=60)
        [figures] = await review_figures(settings, [pipeline_name, "no-such-pipeline"], since_ms=0)
        cli = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "weir", "stats", "--pipeline", pipeline_name, "--json"],
            cwd=repo_root,
            env=worker_env(settings),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert waiting  # still open: the backlog
    assert (figures.escalated, figures.answered, figures.timed_out) == (3, 1, 1)
    assert figures.backlog == 1 and figures.oldest_open_ms is not None
    assert figures.answer_p50_ms is not None and figures.answer_p50_ms >= 300
    assert figures.share_of(4) == 0.75
    assert cli.returncode == 0, cli.stderr
    [row] = json.loads(cli.stdout)["reviews"]
    assert (row["pipeline"], row["escalated"], row["backlog"]) == (pipeline_name, 3, 1)
