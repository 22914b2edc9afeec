"""Synchronous steps that outlive their timeout: counted, reported, and bounded."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import worker_env
from weir.core.config import WeirSettings
from weir.core.errors import StepThreadsExhaustedError, StepTimeoutError
from weir.streams import Pipeline, RetryPolicy, WeirClient, Worker
from weir.streams.executor import StepExecutor
from weir.streams.threads import StepThreads
from weir.web import WebServer


async def _until(check: Callable[[], bool], what: str, *, within_s: float = 30.0) -> None:
    """Wait for ``check`` (a state change, not a duration) or fail naming ``what``."""
    async with asyncio.timeout(within_s):
        while not check():
            await asyncio.sleep(0.02)
    assert check(), what


def _blocking_pipeline(release: threading.Event) -> Pipeline:
    p = Pipeline("shop")

    @p.step(timeout=0.2)
    def hang(sku: str) -> str:
        release.wait(60)  # a call that ignores its timeout, as a hung client library does
        return sku

    @p.step(timeout=5.0)
    def quick(sku: str) -> str:
        return sku

    return p


def _executor(p: Pipeline, step: str, threads: StepThreads) -> StepExecutor:
    return StepExecutor(
        p.steps[step], pipeline=p.name, worker_id="w", default_timeout_s=5, threads=threads
    )


async def test_a_timed_out_sync_step_is_counted_as_stuck_until_its_thread_returns() -> None:
    release = threading.Event()
    p = _blocking_pipeline(release)
    threads = StepThreads(ThreadPoolExecutor(max_workers=4), stuck_max=3)
    try:
        with pytest.raises(StepTimeoutError) as caught:
            await _executor(p, "hang", threads).call({"sku": "X"})
        assert "still running" in str(caught.value) and "1 of at most 3" in str(caught.value)
        [stuck] = threads.stuck()
        assert stuck.step == "hang" and stuck.to_dict()["running_s"] >= 0
        assert threads.abandoned_total == 1
        release.set()
        await _until(lambda: not threads.stuck(), "the returned thread is no longer stuck")
    finally:
        release.set()
        threads.shutdown()


async def test_when_the_budget_is_used_up_sync_steps_fail_fast_and_retriably() -> None:
    release = threading.Event()
    p = _blocking_pipeline(release)
    threads = StepThreads(ThreadPoolExecutor(max_workers=8), stuck_max=2)
    try:
        for _ in range(2):
            with pytest.raises(StepTimeoutError):
                await _executor(p, "hang", threads).call({"sku": "X"})
        assert len(threads.stuck()) == 2
        with pytest.raises(StepThreadsExhaustedError) as caught:
            await _executor(p, "quick", threads).call({"sku": "X"})
        assert caught.value.retriable and caught.value.error_type == "step_threads_exhausted"
        assert "'quick' was not started" in str(caught.value) and "'hang'" in str(caught.value)
        assert threads.refused_total == 1
        release.set()
        await _until(lambda: not threads.stuck(), "stuck threads returned")
        assert await _executor(p, "quick", threads).call({"sku": "Y"}) == "Y"
    finally:
        release.set()
        threads.shutdown()


async def test_a_call_still_queued_at_its_timeout_holds_no_thread() -> None:
    release = threading.Event()
    p = _blocking_pipeline(release)
    threads = StepThreads(ThreadPoolExecutor(max_workers=1), stuck_max=5)
    try:
        results = await asyncio.gather(
            *(_executor(p, "hang", threads).call({"sku": "X"}) for _ in range(3)),
            return_exceptions=True,
        )
        assert all(isinstance(r, StepTimeoutError) for r in results)
        # One call ran (and is stuck); the two behind it never started and were cancelled.
        assert len(threads.stuck()) == 1
    finally:
        release.set()
        threads.shutdown()


@pytest.mark.kafka
async def test_a_stuck_step_shows_in_the_workers_stats_and_health(
    kafka: WeirSettings, pipeline_name: str
) -> None:
    release = threading.Event()
    p = Pipeline(pipeline_name, retry=RetryPolicy(maximum_attempts=1))

    @p.step(timeout=0.5)
    def lookup(sku: str) -> str:
        release.wait(120)
        return sku

    settings = kafka.model_copy(update={"web_port": 0, "step_stuck_threads_max": 4})
    worker = Worker(p, settings)
    try:
        async with worker, WeirClient(settings) as client, WebServer(settings, worker) as web:
            [rid] = await client.submit_many(p.name, [{"sku": "A"}])
            result = (await client.wait_for(p.name, [rid], timeout=60))[rid]
            assert result.status == "FAILURE" and result.error_type == "step_timeout"
            assert "still running" in (result.error_message or "")
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{web.url}/health") as response:
                    health = await response.json()
                async with http.get(f"{web.url}/stats") as response:
                    stats = await response.json()
            assert health["status"] == "degraded"
            [stuck] = health["stuck_steps"]
            assert stuck["step"] == "lookup" and stuck["request_id"] == rid
            assert stuck["running_s"] > 0
            assert stats["threads"]["abandoned_total"] == 1
            assert stats["threads"]["stuck_max"] == 4
            assert [s["step"] for s in stats["stuck_steps"]] == ["lookup"]
            release.set()
            await _until(lambda: not worker.threads.stuck(), "the step's thread returned")
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{web.url}/health") as response,
            ):
                # Breakers of other tests' endpoints are process-wide and may leave the
                # status degraded: what this checks is that no step is reported stuck.
                assert "stuck_steps" not in await response.json()
    finally:
        release.set()


def _worker_process(repo: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "weir", "worker", "tests._pipelines:hung_pipeline"],
            cwd=repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


@pytest.mark.kafka
async def test_a_worker_process_with_a_step_that_never_returns_still_stops(
    kafka: WeirSettings, pipeline_name: str, repo_root: Path, tmp_path: Path
) -> None:
    # Python joins pool threads at exit: without the worker's own exit it would never end.
    log = tmp_path / "worker.log"
    proc = _worker_process(repo_root, worker_env(kafka, WEIR_TEST_PIPELINE=pipeline_name), log)
    try:
        await _until(
            lambda: "assigned" in log.read_text() or proc.poll() is not None,
            "the worker took its partitions",
            within_s=90,
        )
        async with WeirClient(kafka) as client:
            [rid] = await client.submit_many(pipeline_name, [{"n": 1}])
            result = (await client.wait_for(pipeline_name, [rid], timeout=60))[rid]
        assert result.error_type == "step_timeout"
        assert "still running" in (result.error_message or "")
        assert _stop(proc, 90) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "still running past their timeout: wait_forever (request " + rid in text
