"""The answer stage's writer: what it does when it cannot know if a transaction committed."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests._pipelines import linear
from weir.core.kafka import KafkaConnection
from weir.streams import Worker
from weir.streams._answer_writer import _Pending
from weir.topics.names import PipelineTopics

pytestmark = pytest.mark.kafka


async def _assigned(worker: Worker) -> None:
    """Wait until ``worker``'s answer writers are registered and its tables restored."""
    async with asyncio.timeout(60):
        while not worker.assigned:
            await asyncio.sleep(0.1)


async def test_after_an_unclear_commit_answers_already_committed_are_not_written_again(
    kafka, pipeline_name
):
    pipeline = linear(pipeline_name)
    topics = PipelineTopics(pipeline.name)
    async with Worker(pipeline, kafka) as worker:
        await _assigned(worker)
        assert worker.answers is not None
        writer = worker.answers._writers[0]
        # A transaction whose commit response was lost: the markers are on the changelog.
        producer = KafkaConnection.of(kafka).producer()
        await producer.start()
        try:
            for rid in ("committed-1", "committed-2"):
                marker = json.dumps({"s": "S", "r": None, "t": 0}).encode()
                await producer.send_and_wait(
                    topics.answered_changelog, marker, key=rid.encode(), partition=0
                )
        finally:
            await producer.stop()
        loop = asyncio.get_running_loop()
        batch = [
            _Pending(rid, [], loop.create_future())
            for rid in ("committed-1", "not-yet", "committed-2")
        ]
        left = await writer._settle(batch)
    assert [p.request_id for p in left] == ["not-yet"]
    assert batch[0].done.done() and batch[2].done.done() and not batch[1].done.done()


async def test_answered_ids_stay_under_the_cap_and_every_request_is_answered_once(
    kafka, pipeline_name
):
    from tests._kafka import read_results
    from weir.streams import WeirClient

    cap = 40
    settings = kafka.model_copy(update={"answered_max_per_partition": cap})
    pipeline = linear(pipeline_name)
    topics = PipelineTopics(pipeline.name)
    async with Worker(pipeline, settings) as worker, WeirClient(settings) as client:
        ids = await client.submit_many(
            pipeline.name, [{"text": f"flood {i}", "n": i} for i in range(600)]
        )
        done = await client.wait_for(pipeline.name, ids, timeout=120)
        assert len(done) == 600 and all(r.status == "SUCCESS" for r in done.values())
        assert worker.answers is not None
        remembered = worker.answers.remembered()
        assert remembered and max(remembered.values()) <= cap
        assert worker.stats.answered_ids_forgotten >= 600 - cap * settings.partitions
    results, counts = await read_results(settings, topics.results, 600)
    assert set(results) == set(ids) and set(counts.values()) == {1}
    # A worker taking the partitions over restores at most the cap per partition too.
    async with Worker(pipeline, settings) as again:
        await _assigned(again)
        assert again.answers is not None
        assert max(again.answers.remembered().values(), default=0) <= cap


async def test_answers_that_come_while_the_writer_is_idle_use_the_transaction_it_opened_ahead(
    kafka, pipeline_name
):
    from tests._kafka import read_results
    from weir.streams import WeirClient

    settings = kafka.model_copy(update={"partitions": 1})
    pipeline = linear(pipeline_name)
    ids = []
    async with Worker(pipeline, settings) as worker, WeirClient(settings) as client:
        await _assigned(worker)
        for i in range(6):
            rid = await client.submit(pipeline.name, {"text": f"one at a time {i}", "n": i})
            assert (await client.result(rid, timeout=60)).status == "SUCCESS"
            ids.append(rid)
            await asyncio.sleep(0.05)  # longer than answer_open_ahead_ms: idle
        assert worker.stats.answers_ahead == 6
    results, counts = await read_results(settings, PipelineTopics(pipeline.name).results, 6)
    assert set(results) == set(ids) and set(counts.values()) == {1}


async def test_a_transaction_opened_ahead_and_left_unused_is_aborted_and_opened_again_later(
    kafka, pipeline_name, monkeypatch
):
    from tests._kafka import read_results
    from weir.streams import WeirClient, _answer_writer

    monkeypatch.setattr(_answer_writer, "AHEAD_IDLE_S", 0.5)
    settings = kafka.model_copy(update={"partitions": 1})
    pipeline = linear(pipeline_name)
    async with Worker(pipeline, settings) as worker, WeirClient(settings) as client:
        await _assigned(worker)
        assert worker.answers is not None
        writer = worker.answers._writers[0]
        await asyncio.sleep(1.5)  # opened after start, then aborted unused
        assert not writer._ahead
        first = await client.submit(pipeline.name, {"text": "after the abort", "n": 1})
        assert (await client.result(first, timeout=60)).status == "SUCCESS"
        assert worker.stats.answers_ahead == 0  # nothing open: it began its own
        await asyncio.sleep(0.1)
        assert writer._ahead  # opened again after that commit
        second = await client.submit(pipeline.name, {"text": "within the idle time", "n": 2})
        assert (await client.result(second, timeout=60)).status == "SUCCESS"
        assert worker.stats.answers_ahead == 1
    results, counts = await read_results(settings, PipelineTopics(pipeline.name).results, 2)
    assert set(results) == {first, second} and set(counts.values()) == {1}


async def test_a_writer_fenced_while_its_transaction_waits_ahead_answers_once(kafka, pipeline_name):
    from tests._kafka import read_results
    from weir.streams import WeirClient

    settings = kafka.model_copy(update={"partitions": 1})
    pipeline = linear(pipeline_name)
    topics = PipelineTopics(pipeline.name)
    async with Worker(pipeline, settings) as worker, WeirClient(settings) as client:
        await _assigned(worker)
        assert worker.answers is not None
        async with asyncio.timeout(10):
            while not worker.answers._writers[0]._ahead:
                await asyncio.sleep(0.01)
        # Another producer registers the same transactional id and goes away: the open
        # transaction is aborted and the writer's epoch is stale, which it learns only
        # when it answers; it still owns the partition, so it takes the id back.
        intruder = KafkaConnection.of(settings).producer(
            transactional_id=topics.answers_transactional_id(0), enable_idempotence=True
        )
        await intruder.start()
        await intruder.stop()
        rid = await client.submit(pipeline.name, {"text": "after the fence", "n": 1})
        assert (await client.result(rid, timeout=30)).status == "SUCCESS"
        assert worker.stats.answers_ahead == 1
    results, counts = await read_results(settings, topics.results, 1)
    assert set(results) == {rid} and counts[rid] == 1
