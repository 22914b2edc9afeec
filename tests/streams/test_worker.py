"""The runtime on the real broker: every request answered once, with the right value."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests._kafka import read_results, read_topic
from tests._pipelines import branching, diamond, linear, rejoin
from weir.core.config import WeirSettings
from weir.core.errors import JoinInputSkippedError
from weir.schemas.messages import DeadLetter
from weir.streams import WeirClient, Worker, run_local
from weir.streams.pipeline import Pipeline
from weir.topics.names import PipelineTopics

pytestmark = pytest.mark.kafka

N = 1000


async def _answer_all(
    settings: WeirSettings, pipeline: Pipeline, payloads: list[dict[str, object]]
) -> None:
    """Run a worker, submit ``payloads``; each result matches run_local, none lost or twice."""
    async with Worker(pipeline, settings), WeirClient(settings) as client:
        ids = await client.submit_many(pipeline.name, payloads)
        results, counts = await read_results(
            settings, PipelineTopics(pipeline.name).results, len(ids)
        )
    assert len(results) == len(ids), f"{len(ids) - len(results)} requests were not answered"
    assert set(results) == set(ids)
    assert [rid for rid, c in counts.items() if c > 1] == [], "some requests answered twice"
    for rid, payload in zip(ids, payloads, strict=True):
        expected, path = await run_local(pipeline, payload)
        result = results[rid]
        assert result.status == "SUCCESS", result
        assert result.value == expected, (payload, result)
        assert result.path == path


async def test_linear_pipeline_answers_each_request_once(kafka, pipeline_name):
    payloads = [{"text": " ".join(["w"] * (i % 7 + 1)), "n": i} for i in range(N)]
    await _answer_all(kafka, linear(pipeline_name), payloads)


async def test_diamond_joins_both_branches_once_per_request(kafka, pipeline_name):
    await _answer_all(kafka, diamond(pipeline_name), [{"n": i} for i in range(N)])


async def test_branching_sends_each_request_down_one_path(kafka, pipeline_name):
    texts = [
        "what is my balance",
        "i was charged twice for a purchase",
        "a b c",
        "dispute this transaction immediately please",
    ]
    payloads = [{"text": texts[i % 4], "customer": f"c{i % 13}"} for i in range(N)]
    pipeline = branching(pipeline_name)
    await _answer_all(kafka, pipeline, payloads)
    ends = {(await run_local(pipeline, p))[1][-1] for p in payloads}
    assert ends == {"lookup", "deliver", "escalate"}  # every path was exercised


async def test_rejoin_runs_on_whichever_branch_ran(kafka, pipeline_name):
    pipeline = rejoin(pipeline_name)
    payloads = [{"n": i} for i in range(N)]
    await _answer_all(kafka, pipeline, payloads)
    paths = [(await run_local(pipeline, p))[1] for p in payloads]
    assert sum("path_a" in path for path in paths) == N // 2
    assert all(path[-1] == "finish" for path in paths)


async def test_all_of_join_over_exclusive_branches_fails_naming_the_skipped_input(
    kafka, pipeline_name
):
    pipeline = rejoin(pipeline_name, any_branch=False)
    async with Worker(pipeline, kafka), WeirClient(kafka) as client:
        ids = await client.submit_many(pipeline.name, [{"n": i} for i in range(40)])
        results, counts = await read_results(kafka, PipelineTopics(pipeline.name).results, 40)
    assert set(results) == set(ids) and max(counts.values()) == 1
    for i, rid in enumerate(ids):
        result = results[rid]
        skipped = "path_b" if i % 2 == 0 else "path_a"
        assert (result.status, result.error_type, result.failed_step) == (
            "FAILURE",
            "join_input_skipped",
            "finish",
        ), result
        assert repr(skipped) in (result.error_message or ""), result.error_message
        assert "any_of" in (result.error_message or "")
    # run_local agrees with the worker.
    with pytest.raises(JoinInputSkippedError, match="'path_b' was skipped"):
        await run_local(pipeline, {"n": 0})


async def test_avro_and_json_requests_are_both_accepted(kafka, pipeline_name):
    pipeline = diamond(pipeline_name)
    async with Worker(pipeline, kafka), WeirClient(kafka) as client:
        a = await client.submit(pipeline.name, {"n": 1}, fmt="avro")
        j = await client.submit(pipeline.name, {"n": 2}, fmt="json")
        results = await client.wait_for(pipeline.name, [a, j], timeout=60)
    assert results[a].value == {"double": 4, "square": 4, "sum": 8}
    assert results[j].value == {"double": 6, "square": 9, "sum": 15}


async def test_bad_requests_are_dead_lettered_and_the_worker_goes_on(kafka, pipeline_name):
    pipeline = diamond(pipeline_name)
    topics = PipelineTopics(pipeline.name)
    bad = [
        (b"\x00\x01\x02garbage", b"k-bytes", "undecodable"),
        (b"\xff\xfe not json", None, "undecodable"),
        (b'{"request_id": "r-types", "payload": {"n": "not a number"}}', None, "schema_invalid"),
        (b'{"request_id": "r-missing", "payload": {"m": 1}}', None, "schema_invalid"),
        (b'{"request_id": "r-list", "payload": [1, 2]}', None, "schema_invalid"),
        (b"[1, 2, 3]", b"k-array", "undecodable"),
        (b'{"payload": {"n": 1}, "extra": true}', b"k-extra", "schema_invalid"),
        (b"{" + b" " * (kafka.max_payload_bytes + 10) + b"}", b"k-big", "payload_too_large"),
    ]
    async with Worker(pipeline, kafka) as worker, WeirClient(kafka) as client:
        before = await client.submit(pipeline.name, {"n": 10})
        for value, key, _ in bad:
            await client.send_raw(pipeline.name, value, key)
        after = await client.submit(pipeline.name, {"n": 11})
        results = await client.wait_for(pipeline.name, [before, after], timeout=60)
        dead = await read_topic(kafka, topics.dead_letter("requests"), until=len(bad))
        assert worker.stats.dead_lettered == len(bad)
    assert results[before].value["sum"] == 22 + 121
    assert results[after].value["sum"] == 24 + 144
    assert len(dead) == len(bad)
    by_value = {r.value: DeadLetter.from_message(r.key, r.value, list(r.headers)) for r in dead}
    for value, key, error_type in bad:
        letter = by_value[value]  # the original bytes are kept unchanged
        assert letter.error_type == error_type, (value[:40], letter.error_message)
        assert letter.key == key
        assert letter.source_topic == topics.requests
        assert letter.step == "requests"
        assert letter.error_message
    assert "limit (max_payload_bytes)" in by_value[bad[-1][0]].error_message
    assert "n" in by_value[bad[2][0]].error_message
    assert "missing field" in by_value[bad[3][0]].error_message


async def test_a_raising_step_is_dead_lettered_with_a_failure_result(kafka, pipeline_name):
    p = Pipeline(pipeline_name)

    @p.step()
    def check(n: int) -> int:
        if n % 10 == 3:
            raise ValueError(f"cannot handle {n}")
        return n

    async with Worker(p, kafka), WeirClient(kafka) as client:
        ids = await client.submit_many(p.name, [{"n": i} for i in range(50)])
        results = await client.wait_for(p.name, ids, timeout=60)
    failed = {rid for rid, r in results.items() if r.status == "FAILURE"}
    assert len(failed) == 5
    dead = await read_topic(kafka, PipelineTopics(p.name).dead_letter("check"), until=5)
    assert len(dead) == 5
    letter = DeadLetter.from_message(dead[0].key, dead[0].value, list(dead[0].headers))
    assert letter.error_type == "step_error"
    assert "ValueError: cannot handle" in letter.error_message
    assert "Traceback" in (letter.stacktrace or "")
    assert letter.request_id in failed
    r = results[letter.request_id]
    assert (r.error_type, r.failed_step) == ("step_error", "check")


async def test_many_slow_calls_run_concurrently_on_one_partition(kafka, pipeline_name):
    """200 requests whose step awaits 0.5 s finish in far less than 200 x 0.5 s."""
    p = Pipeline(pipeline_name)

    @p.step()
    async def slow_model(n: int) -> int:
        await asyncio.sleep(0.5)
        return n

    settings = kafka.model_copy(update={"partitions": 1})
    async with Worker(p, settings), WeirClient(settings) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        ids = await client.submit_many(p.name, [{"n": i} for i in range(200)])
        results = await client.wait_for(p.name, ids, timeout=60)
        elapsed = loop.time() - started
    assert sorted(r.value for r in results.values()) == list(range(200))
    # Serial processing would need 100 s; concurrency makes it a few seconds.
    assert elapsed < 30, elapsed


def test_results_round_trip_as_json_lines(kafka):
    # Results are plain JSON by default: what kcat would print.
    from weir.schemas.messages import Result

    raw = Result(
        request_id="r",
        pipeline="p",
        status="SUCCESS",
        output=json.dumps({"a": 1}),
        submitted_at=1,
        completed_at=2,
        latency_ms=1.0,
    ).to_wire("json")
    assert json.loads(raw)["output"] == {"a": 1}  # a JSON value, not text to decode again
