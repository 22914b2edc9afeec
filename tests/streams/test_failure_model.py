"""Retries, timeouts, fallbacks, dead letters and replay, on the real broker."""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys

import pytest

from tests._kafka import read_topic
from tests.conftest import worker_env
from weir.core.errors import ModelTimeoutError
from weir.schemas.messages import DeadLetter, Envelope, Result
from weir.streams import Fallback, Pipeline, RetryPolicy, WeirClient, Worker
from weir.topics.names import PipelineTopics

pytestmark = pytest.mark.kafka

FAST = RetryPolicy(initial_interval=0.2, backoff_coefficient=2.0, maximum_attempts=3, jitter=0.0)


async def _results(settings, pipeline: str, n: int, timeout: float = 90) -> list[Result]:
    records = await read_topic(settings, PipelineTopics(pipeline).results, until=n, timeout=timeout)
    return [Result.from_wire(r.value) for r in records]


async def test_failed_attempts_are_retried_until_they_succeed(kafka, pipeline_name):
    attempts: collections.Counter[int] = collections.Counter()
    p = Pipeline(pipeline_name, retry=FAST)

    @p.step()
    def flaky(n: int) -> int:
        attempts[n] += 1
        if attempts[n] <= n % 3:  # n % 3 failures, then success
            raise ModelTimeoutError(f"model slow for {n}")
        return n * 10

    async with Worker(p, kafka) as worker, WeirClient(kafka) as client:
        ids = await client.submit_many(p.name, [{"n": i} for i in range(60)])
        results = await client.wait_for(p.name, ids, timeout=60)
    assert [results[rid].value for rid in ids] == [i * 10 for i in range(60)]
    assert dict(attempts) == {i: i % 3 + 1 for i in range(60)}
    assert worker.stats.retried == sum(i % 3 for i in range(60))
    assert worker.stats.dead_lettered == 0
    assert worker.stats.failures_by_type == {"model_timeout": worker.stats.retried}


async def test_exhausted_and_non_retryable_failures_are_dead_lettered_with_connect_headers(
    kafka, pipeline_name
):
    seen: collections.Counter[int] = collections.Counter()
    p = Pipeline(pipeline_name)

    @p.step(
        retry=RetryPolicy(
            initial_interval=0.1,
            maximum_attempts=3,
            jitter=0.0,
            non_retryable_error_types=["KeyError"],
        )
    )
    def lookup(n: int) -> int:
        seen[n] += 1
        if n == 1:
            raise RuntimeError("always broken")  # retried, then exhausted
        if n == 2:
            raise KeyError("no such account")  # never retried
        return n

    topics = PipelineTopics(p.name)
    async with Worker(p, kafka), WeirClient(kafka) as client:
        ids = await client.submit_many(p.name, [{"n": i} for i in range(4)])
        results = await client.wait_for(p.name, ids, timeout=60)
        dead = await read_topic(kafka, topics.dead_letter("lookup"), until=2)
    assert seen == {0: 1, 1: 3, 2: 1, 3: 1}
    assert [results[rid].status for rid in ids] == ["SUCCESS", "FAILURE", "FAILURE", "SUCCESS"]
    assert results[ids[1]].error_type == results[ids[2]].error_type == "step_error"
    assert results[ids[1]].failed_step == "lookup"
    assert len(dead) == 2
    by_request = {}
    for record in dead:
        headers = dict(record.headers)
        # Kafka Connect's names for what Connect has, weir.* for the rest.
        for name in (
            "topic",
            "partition",
            "offset",
            "exception.class.name",
            "exception.message",
            "exception.stacktrace",
            "connector.name",
            "task.id",
            "stage",
        ):
            assert f"__connect.errors.{name}" in headers
        letter = DeadLetter.from_message(record.key, record.value, list(record.headers))
        by_request[letter.request_id] = (letter, record)
    exhausted, record = by_request[ids[1]]
    assert exhausted.attempt == 3
    assert exhausted.first_failed_at <= exhausted.last_failed_at
    assert exhausted.source_topic == topics.retry("lookup", 2)  # the last attempt's input
    assert "RuntimeError: always broken" in exhausted.error_message
    assert "Traceback" in (exhausted.stacktrace or "")
    assert Envelope.decode(record.value).request_id == ids[1]  # the message, unchanged
    never, _ = by_request[ids[2]]
    # A root step runs on the request's own record: its first attempt's input is there.
    assert never.attempt == 1 and never.source_topic == topics.requests


async def test_a_step_timeout_is_an_error_type_and_a_fallback_answers(kafka, pipeline_name):
    p = Pipeline(pipeline_name)

    @p.step(
        timeout=0.3,
        retry=RetryPolicy(initial_interval=0.1, maximum_attempts=2, jitter=0.0),
        fallback=Fallback(value={"answer": "a human will reply", "fallback": True}),
    )
    async def generate(n: int) -> dict[str, object]:
        if n % 2:
            await asyncio.sleep(5)  # hangs past the timeout
        return {"answer": f"model says {n}", "fallback": False}

    @p.step(depends_on=[generate])
    def deliver(generate: dict[str, object]) -> dict[str, object]:
        return {"delivered": generate}

    async with Worker(p, kafka) as worker, WeirClient(kafka) as client:
        ids = await client.submit_many(p.name, [{"n": i} for i in range(10)])
        results = await client.wait_for(p.name, ids, timeout=60)
    for i, rid in enumerate(ids):
        r = results[rid]
        assert r.status == "SUCCESS"
        expected = (
            {"answer": "a human will reply", "fallback": True}
            if i % 2
            else {"answer": f"model says {i}", "fallback": False}
        )
        assert r.value == {"delivered": expected}
    assert worker.stats.fallbacks == 5
    assert worker.stats.failures_by_type == {"step_timeout": 10}  # 5 requests x 2 attempts


async def test_a_waiting_retry_does_not_hold_up_its_partition(kafka, pipeline_name):
    """One request backs off for 6 s; 300 behind it on the same partition finish first."""
    settings = kafka.model_copy(update={"partitions": 1})
    failed_once: set[int] = set()
    finished: list[int] = []
    p = Pipeline(pipeline_name)

    @p.step(retry=RetryPolicy(initial_interval=6.0, maximum_attempts=2, jitter=0.0))
    def work(n: int) -> int:
        if n == 0 and n not in failed_once:
            failed_once.add(n)
            raise RuntimeError("transient")
        finished.append(n)
        return n

    async with Worker(p, settings), WeirClient(settings) as client:
        loop = asyncio.get_running_loop()
        first = await client.submit(p.name, {"n": 0})
        started = loop.time()
        rest = await client.submit_many(p.name, [{"n": i} for i in range(1, 301)])
        results = await client.wait_for(p.name, [first, *rest], timeout=60)
        elapsed = loop.time() - started
    assert finished[-1] == 0, "the backing-off request finished before the others"
    assert sorted(finished) == list(range(301))
    assert elapsed >= 6.0  # the retry waited its backoff
    assert results[first].value == 0


async def test_replay_runs_only_the_failed_branch_again(kafka, pipeline_name, repo_root):
    """100 of 500 requests fail at `enrich`; fixed and replayed, only `enrich` and below re-run."""
    calls: collections.Counter[str] = collections.Counter()
    broken = True
    p = Pipeline(
        pipeline_name, retry=RetryPolicy(initial_interval=0.1, maximum_attempts=2, jitter=0.0)
    )

    @p.step()
    def fetch(n: int) -> int:
        calls["fetch"] += 1
        return n

    @p.step(depends_on=[fetch])
    def enrich(fetch: int) -> int:
        calls["enrich"] += 1
        if broken and fetch % 5 == 0:
            raise ConnectionError("enrichment service down")
        return fetch * 10

    @p.step(depends_on=[fetch])
    def side(fetch: int) -> int:
        calls["side"] += 1
        return fetch + 1

    @p.step(depends_on=[enrich, side])
    def combine(enrich: int, side: int) -> dict[str, int]:
        calls["combine"] += 1
        return {"enrich": enrich, "side": side}

    env = worker_env(kafka)

    def weir(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "weir", *args],
            cwd=repo_root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    async with Worker(p, kafka) as worker, WeirClient(kafka) as client:
        ids = await client.submit_many(p.name, [{"n": i} for i in range(500)])
        first = await client.wait_for(p.name, ids, timeout=90)
        failed = {rid for rid, r in first.items() if r.status == "FAILURE"}
        assert len(failed) == 100
        assert {first[rid].error_type for rid in failed} == {"step_error"}
        assert dict(calls) == {"fetch": 500, "side": 500, "enrich": 600, "combine": 400}

        listed = weir("dlq", "list", p.name, "--step", "enrich", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert {row["request_id"] for row in rows} == failed
        assert {row["error_type"] for row in rows} == {"step_error"}
        shown = weir("dlq", "show", rows[0]["id"])
        assert shown.returncode == 0 and "enrichment service down" in shown.stdout

        dry = weir("dlq", "replay", p.name, "--step", "enrich", "--dry-run")
        assert "would replay 100 of 100" in dry.stdout, dry.stdout + dry.stderr
        broken = False  # the cause is fixed
        done = weir("dlq", "replay", p.name, "--step", "enrich")
        assert done.returncode == 0, done.stderr
        assert "replayed 100 of 100" in done.stdout

        records = await read_topic(kafka, PipelineTopics(p.name).results, until=600, timeout=90)
        again = weir("dlq", "replay", p.name, "--step", "enrich")
        assert "replayed 0 of 100" in again.stdout and "100 were replayed before" in again.stdout
        assert worker.stats.results == 600
    answers = collections.defaultdict(list)
    for record in records:
        result = Result.from_wire(record.value)
        answers[result.request_id].append(result)
    assert len(records) == 600  # 500 first answers + 100 replayed ones, nothing else
    for rid in ids:
        if rid in failed:
            assert [r.status for r in answers[rid]] == ["FAILURE", "SUCCESS"]
            replayed = answers[rid][1]
            assert replayed.replay is not None and replayed.request_id == rid
            assert replayed.path == ["fetch", "enrich", "side", "combine"]
        else:
            assert [r.status for r in answers[rid]] == ["SUCCESS"]
    # Only the failed branch ran again: fetch and side kept their counts.
    assert dict(calls) == {"fetch": 500, "side": 500, "enrich": 700, "combine": 500}


async def test_an_output_kafka_refuses_fails_the_request_and_the_worker_goes_on(
    kafka, pipeline_name
):
    p = Pipeline(pipeline_name)

    @p.step()
    def render(n: int) -> str:
        return "x" * (2_000_000 if n == 1 else 10)  # above Kafka's 1 MB message limit

    @p.step(depends_on=[render])
    def deliver(render: str) -> int:
        return len(render)

    async with Worker(p, kafka) as worker, WeirClient(kafka) as client:
        ids = await client.submit_many(p.name, [{"n": i} for i in range(3)])
        results = await client.wait_for(p.name, ids, timeout=60)
        dead = await read_topic(kafka, PipelineTopics(p.name).dead_letter("render"), until=1)
    assert [results[rid].status for rid in ids] == ["SUCCESS", "FAILURE", "SUCCESS"]
    assert results[ids[1]].error_type == "output_too_large"
    assert "too large" in (results[ids[1]].error_message or "")
    assert len(dead) == 1
    assert DeadLetter.from_message(
        dead[0].key, dead[0].value, list(dead[0].headers)
    ).error_type == ("output_too_large")
    assert worker.stats.failures_by_type == {"output_too_large": 1}
