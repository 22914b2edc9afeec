"""Worker processes of one pipeline for group-wide tests: started, joined, stopped."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiokafka.errors import GroupCoordinatorNotAvailableError

from tests.conftest import worker_env
from weir.core.config import WeirSettings
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics


@contextlib.asynccontextmanager
async def group_workers(
    kafka: WeirSettings,
    target: str,
    pipeline: str,
    *,
    count: int,
    repo_root: Path,
    logs: Path,
    **env: str,
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """``count`` ``weir worker target`` processes, yielded once all are in the group."""
    environ = worker_env(kafka, WEIR_TEST_PIPELINE=pipeline, WEIR_WEB_PORT="0", **env)
    cmd = [sys.executable, "-m", "weir", "worker", target]
    files = [(logs / f"worker{i}.log").open("w") for i in range(count)]
    workers = [
        await asyncio.create_subprocess_exec(
            *cmd, cwd=repo_root, env=environ, stdout=f, stderr=subprocess.STDOUT
        )
        for f in files
    ]
    try:
        group = PipelineTopics(pipeline).consumer_group
        async with TopicAdmin(kafka) as admin:
            for _ in range(600):
                if await _stable_members(admin, group) == count:
                    break
                await asyncio.sleep(0.2)
            assert await _stable_members(admin, group) == count
        yield workers
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.terminate()
        for worker in workers:
            try:
                await asyncio.wait_for(worker.wait(), 60)
            except TimeoutError:
                worker.kill()
                await worker.wait()
        for f in files:
            f.close()


async def _stable_members(admin: TopicAdmin, group: str) -> int:
    """Members of ``group`` once its partitions are handed out (0 while it rebalances).

    A member counts as soon as it asks to join; work submitted before the group is
    stable may all go to the first member until the rebalance ends.
    """
    try:
        responses = await admin._admin.describe_consumer_groups([group])
    except GroupCoordinatorNotAvailableError:  # no member has joined it yet
        return 0
    for response in responses:
        for described in response.groups:
            if described[1] == group and not described[0] and described[2] == "Stable":
                return len(described[5])
    return 0
