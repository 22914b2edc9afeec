"""Workers as real ``weir worker`` processes: sharing a group, stopping, restarting."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests._kafka import read_results, read_topic
from tests._pipelines import diamond
from tests.conftest import worker_env
from weir.streams import WeirClient
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics, topic_specs

pytestmark = pytest.mark.kafka


class WorkerProcess:
    """``python -m weir worker tests._pipelines:diamond_pipeline`` with its log in a file."""

    def __init__(self, repo: Path, env: dict[str, str], log: Path, steps: str | None = None):
        self.log = log
        cmd = [sys.executable, "-m", "weir", "worker", "tests._pipelines:diamond_pipeline"]
        if steps:
            cmd += ["--steps", steps]
        self._fh = log.open("w")
        self.proc = subprocess.Popen(
            cmd, cwd=repo, env=env, stdout=self._fh, stderr=subprocess.STDOUT
        )

    def topics(self) -> int:
        """Input topics the worker subscribed to, from its start-up line."""
        found = re.findall(r"started pipeline \S+ on \S+ \((\d+) topics\)", self.log.read_text())
        return int(found[-1]) if found else 0

    def assigned(self) -> int:
        """Partitions held after the latest rebalance, from the worker's own log."""
        counts = re.findall(r"assigned \d+ partitions \((\d+) in total\)", self.log.read_text())
        return int(counts[-1]) if counts else 0

    async def wait_assigned(self, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while self.assigned() == 0:
                if self.proc.poll() is not None:
                    raise AssertionError(f"worker exited:\n{self.log.read_text()[-3000:]}")
                await asyncio.sleep(0.2)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._fh.close()
        return code


async def _create_topics(settings, name: str) -> None:
    async with TopicAdmin(settings) as admin:
        await admin.ensure(topic_specs(diamond(name), settings))


def _expected(n: int) -> dict[str, int]:
    return {"double": 2 * (n + 1), "square": (n + 1) ** 2, "sum": 2 * (n + 1) + (n + 1) ** 2}


async def test_two_workers_share_partitions_and_one_stopping_loses_nothing(
    kafka, pipeline_name, repo_root, tmp_path
):
    await _create_topics(kafka, pipeline_name)
    env = worker_env(kafka, WEIR_TEST_PIPELINE=pipeline_name, WEIR_TEST_SLOW_S="0.02")
    a = WorkerProcess(repo_root, env, tmp_path / "a.log")
    b = WorkerProcess(repo_root, env, tmp_path / "b.log")
    try:
        await a.wait_assigned()
        await b.wait_assigned()
        async with asyncio.timeout(60):  # wait for the group to settle on both members
            while not (
                a.assigned() > 0
                and b.assigned() > 0
                and a.assigned() + b.assigned() == a.topics() * kafka.partitions
            ):
                await asyncio.sleep(0.2)
        async with WeirClient(kafka) as client:
            ids = await client.submit_many(pipeline_name, [{"n": i} for i in range(1000)])
            ns = {rid: i for i, rid in enumerate(ids)}
            topic = PipelineTopics(pipeline_name).results
            async with asyncio.timeout(60):
                while len(await read_topic(kafka, topic, idle_s=0.3)) < 200:
                    await asyncio.sleep(0.1)
            assert a.stop() == 0, a.log.read_text()[-3000:]  # graceful, mid-run
            results, _ = await read_results(kafka, topic, len(ids))
        assert set(results) == set(ids), f"{len(set(ids) - set(results))} requests unanswered"
        for rid, result in results.items():
            assert result.value == _expected(ns[rid])
        assert "stopped" in a.log.read_text()
    finally:
        a.stop(signal.SIGKILL)
        b.stop(signal.SIGKILL)


async def test_a_fan_in_half_done_before_a_restart_completes_after_it(
    kafka, pipeline_name, repo_root, tmp_path
):
    """Phase 1 runs without ``square``: every join holds one input. Phase 2 finishes them."""
    await _create_topics(kafka, pipeline_name)
    env = worker_env(kafka, WEIR_TEST_PIPELINE=pipeline_name)
    topics = PipelineTopics(pipeline_name)
    n = 300
    first = WorkerProcess(repo_root, env, tmp_path / "first.log", steps="start,double,combine")
    try:
        await first.wait_assigned()
        async with WeirClient(kafka) as client:
            ids = await client.submit_many(pipeline_name, [{"n": i} for i in range(n)])
        # Every request's `double` input is waiting in the join's changelog.
        waiting = await read_topic(kafka, topics.join_changelog("combine"), until=n)
        assert len({r.key for r in waiting}) == n
        assert first.stop() == 0
    finally:
        first.stop(signal.SIGKILL)
    results_so_far = await read_topic(kafka, topics.results, idle_s=0.5)
    assert results_so_far == []

    second = WorkerProcess(repo_root, env, tmp_path / "second.log")
    try:
        results, counts = await read_results(kafka, topics.results, n)
    finally:
        second.stop()
    assert set(results) == set(ids)
    assert max(counts.values()) == 1
    for i, rid in enumerate(ids):
        assert results[rid].value == _expected(i)
        assert results[rid].path == ["start", "double", "square", "combine"]
    assert "restored" in second.log.read_text()
