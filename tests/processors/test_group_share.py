"""Limits shared by a pipeline's workers: two real worker processes, one counting server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from tests.conftest import worker_env
from weir.processors.limits import TokenBucket
from weir.streams import WeirClient
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics

pytestmark = pytest.mark.kafka

RPM = 30


async def test_two_worker_processes_stay_within_one_requests_per_minute_limit(
    kafka, pipeline_name, servers, repo_root, tmp_path
):
    server = await servers("counted")
    env = worker_env(
        kafka,
        WEIR_TEST_PIPELINE=pipeline_name,
        WEIR_TEST_MODEL_URL=server.url,
        WEIR_TEST_RPM=str(RPM),
        WEIR_WEB_PORT="0",
    )
    cmd = [sys.executable, "-m", "weir", "worker", "tests._limit_pipeline:pipeline"]
    logs = [(tmp_path / f"worker{i}.log").open("w") for i in range(2)]
    workers = [
        await asyncio.create_subprocess_exec(
            *cmd, cwd=repo_root, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        for log in logs
    ]
    try:
        group = PipelineTopics(pipeline_name).consumer_group
        async with TopicAdmin(kafka) as admin:
            for _ in range(600):
                if await admin.group_members(group) == 2:
                    break
                await asyncio.sleep(0.2)
            assert await admin.group_members(group) == 2
        async with WeirClient(kafka) as client:
            await client.submit_many(pipeline_name, [{"text": f"t{i}"} for i in range(120)])
        started = time.monotonic()
        await asyncio.sleep(20)
        elapsed = time.monotonic() - started
        calls = server.calls["embeddings"]
        # The group's bucket: one minute's burst (RPM) plus RPM/60 a second since. Two
        # unshared buckets would allow twice that, and would have taken 2 * RPM at once.
        allowed = RPM + RPM * elapsed / 60
        assert 0 < calls <= allowed + 1, (calls, allowed)
        assert calls > RPM / 2  # both members got their share: the work is flowing
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                await asyncio.wait_for(worker.wait(), 60)
            except TimeoutError:
                worker.kill()
                await worker.wait()
        for log in logs:
            log.close()


def test_a_bucket_keeps_its_share_of_rate_and_burst():
    bucket = TokenBucket(120)
    bucket.set_share(4)
    assert bucket.capacity == 30 and bucket.share == 4
    bucket.set_share(1)
    assert bucket.capacity == 120
