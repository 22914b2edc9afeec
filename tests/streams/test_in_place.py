"""A batch of inline steps runs the next inline step on its outputs in the same task: the
records stay on the step topics (marked), trace events and dead letters carry their real
coordinates, retries go the usual way, and records another worker marked are processed."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from tests._kafka import read_results, read_topic
from weir.core.config import WeirSettings
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import DeadLetter, Envelope, TraceEvent, now_us
from weir.schemas.trace_batch import unpack_trace_events
from weir.streams import RetryPolicy, WeirClient, Worker
from weir.streams._in_place import IN_PLACE_HEADER, Landing
from weir.streams.outbox import OutMessage
from weir.streams.pipeline import Pipeline
from weir.topics._aiokafka import stop_consumer
from weir.topics.names import PipelineTopics

pytestmark = pytest.mark.kafka

N = 400


def _chain(name: str, *, fail_every: int = 0, attempts: int = 1) -> Pipeline:
    retry = RetryPolicy(
        maximum_attempts=attempts, initial_interval=0.1, non_retryable_error_types=["KeyError"]
    )
    p = Pipeline(name, retry=retry)

    @p.step(inline=True)
    def a(n: int) -> int:
        return n + 1

    @p.step(depends_on=[a], inline=True)
    def b(a: int) -> int:
        if fail_every and a % fail_every == 0:
            raise ValueError(f"b refuses {a}")  # retried, then dead-lettered
        if fail_every and a % fail_every == 5:
            raise KeyError(f"b cannot take {a}")  # dead-lettered at once
        return a + 1

    @p.step(depends_on=[b], inline=True)
    def c(b: int) -> dict[str, int]:
        return {"n": b + 1}

    return p


def _traced(kafka: WeirSettings, name: str) -> WeirSettings:
    """This test's own trace topic, so its events can be read back alone."""
    return _on(kafka).model_copy(update={"trace_topic": f"{name}.traces"})


def _on(kafka: WeirSettings) -> WeirSettings:
    """In place for batches of any size (by default only small ones), so every record is."""
    return kafka.model_copy(update={"in_place_steps": True, "in_place_max_batch": 100_000})


async def _holding_everything(worker: Worker, settings: WeirSettings, topics: list[str]) -> None:
    """Until the worker holds every partition of ``topics`` (in-place needs them held)."""
    wanted = {TopicPartition(t, p) for t in topics for p in range(settings.partitions)}
    async with asyncio.timeout(60):
        while not wanted <= worker.assigned:
            await asyncio.sleep(0.1)


async def _committed_to_the_end(settings: WeirSettings, group: str, topics: list[str]) -> None:
    consumer = KafkaConnection.of(settings).consumer(group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        for topic in topics:
            tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                assert (await consumer.committed(tp) or 0) == ends[tp], tp
    finally:
        await stop_consumer(consumer)


async def test_a_chain_runs_in_place_keeps_its_records_and_traces_their_coordinates(
    kafka, pipeline_name
):
    settings = _traced(kafka, pipeline_name)
    pipeline = _chain(pipeline_name)
    topics = PipelineTopics(pipeline.name)
    async with Worker(pipeline, settings) as worker, WeirClient(settings) as client:
        await _holding_everything(
            worker, settings, [topics.answers, topics.step("b"), topics.step("c")]
        )
        ids = await client.submit_many(pipeline.name, [{"n": i} for i in range(N)])
        results, counts = await read_results(settings, topics.results, N)
        stats = worker.stats
    assert [rid for rid, c in counts.items() if c > 1] == [], "some requests answered twice"
    for i, rid in enumerate(ids):
        assert results[rid].status == "SUCCESS", results[rid]
        assert results[rid].value == {"n": i + 3}
        assert results[rid].path == ["a", "b", "c"]
    # The records stay on the step topics (replay reads them), marked as run in place.
    by_coordinates: dict[tuple[str, int, int], Envelope] = {}
    for step in ("b", "c"):
        records = await read_topic(settings, topics.step(step), idle_s=0.5)
        assert len(records) == N, step
        for r in records:
            assert [k for k, _ in r.headers] == [IN_PLACE_HEADER]
            by_coordinates[(r.topic, r.partition, r.offset)] = Envelope.decode(r.value)
    # Each record counted once: the requests, and b's and c's inputs run in place (the
    # step consumers skipped what this worker marked, or ``received`` would be higher).
    assert stats.received == 3 * N
    # Every output was small, so each step ran while its record was still on its way.
    assert (stats.in_place, stats.ran_ahead) == (2 * N, 2 * N)
    # Every step's trace event names the record it ran on, as it would have read it.
    packed = await read_topic(settings, settings.trace_topic, idle_s=0.5)
    events = [
        TraceEvent.decode(raw) for r in packed for raw in unpack_trace_events(r.value, r.headers)
    ]
    assert len(events) == 3 * N
    for event in events:  # the decoded Avro records: dicts
        if event["step_name"] == "a":
            assert event["topic"] == topics.requests
            continue
        env = by_coordinates[(event["topic"], event["partition"], event["offset"])]
        assert (env.request_id, env.step) == (event["request_id"], event["step_name"])
    await _committed_to_the_end(
        settings, topics.consumer_group, [topics.requests, topics.step("b"), topics.step("c")]
    )


async def test_a_round_with_a_large_output_waits_for_its_acknowledgement(kafka, pipeline_name):
    """Only a round whose messages are all small runs its next step before they land (a
    broker could refuse a large one, which would then go again unmarked)."""
    settings = _traced(kafka, pipeline_name)
    p = Pipeline(pipeline_name)

    @p.step(inline=True)
    def big(n: int) -> str:
        return str(n) * 150_000  # over RUN_AHEAD_MAX_BYTES

    @p.step(depends_on=[big], inline=True)
    def size(big: str) -> int:
        return len(big)

    @p.step(depends_on=[size], inline=True)
    def done(size: int) -> dict[str, int]:
        return {"size": size}

    topics = PipelineTopics(p.name)
    n = 20
    async with Worker(p, settings) as worker, WeirClient(settings) as client:
        await _holding_everything(
            worker, settings, [topics.answers, topics.step("size"), topics.step("done")]
        )
        ids = await client.submit_many(p.name, [{"n": i} for i in range(1, n + 1)])
        results, counts = await read_results(settings, topics.results, n)
        stats = worker.stats
    assert sorted(counts.values()) == [1] * n
    for i, rid in enumerate(ids, start=1):
        assert results[rid].value == {"size": len(str(i)) * 150_000}
    # ``size`` waited for ``big``'s large records to land; ``done`` ran ahead of ``size``'s.
    assert (stats.in_place, stats.ran_ahead) == (2 * n, n)
    # Either way, every trace event names the record it ran on.
    packed = await read_topic(settings, settings.trace_topic, idle_s=0.5)
    events = [
        TraceEvent.decode(raw) for r in packed for raw in unpack_trace_events(r.value, r.headers)
    ]
    assert len(events) == 3 * n
    for step in ("size", "done"):
        records = await read_topic(settings, topics.step(step), idle_s=0.5)
        where = {(r.partition, r.offset): Envelope.decode(r.value).request_id for r in records}
        for event in (e for e in events if e["step_name"] == step):
            assert where[(event["partition"], event["offset"])] == event["request_id"]


async def test_a_step_failing_in_place_retries_and_dead_letters_its_records_coordinates(
    kafka, pipeline_name
):
    pipeline = _chain(pipeline_name, fail_every=10, attempts=2)
    topics = PipelineTopics(pipeline.name)
    n = 100
    async with Worker(pipeline, _on(kafka)) as worker, WeirClient(kafka) as client:
        await _holding_everything(worker, kafka, [topics.answers, topics.step("b")])
        ids = await client.submit_many(pipeline.name, [{"n": i} for i in range(n)])
        results, counts = await read_results(kafka, topics.results, n)
    assert [rid for rid, c in counts.items() if c > 1] == []
    failing = {i for i in range(n) if (i + 1) % 10 == 0}
    refused = {i for i in range(n) if (i + 1) % 10 == 5}
    for i, rid in enumerate(ids):
        if i in failing | refused:
            assert results[rid].status == "FAILURE", results[rid]
            assert results[rid].failed_step == "b"
        else:
            assert results[rid].value == {"n": i + 3}
    # The first failure went to b's retry topic, as if b had read its input from its topic.
    retried = await read_topic(kafka, topics.retry("b", 1), idle_s=0.5)
    assert sorted(Envelope.decode(r.value).request_id for r in retried) == sorted(
        ids[i] for i in failing
    )
    # The second to b's dead-letter topic: the record it ran on, where it really is.
    inputs = {
        (r.topic, r.partition, r.offset): r.value
        for topic in (topics.step("b"), topics.retry("b", 1))
        for r in await read_topic(kafka, topic, idle_s=0.5)
    }
    dead = await read_topic(kafka, topics.dead_letter("b"), idle_s=0.5)
    assert len(dead) == len(failing) + len(refused)
    sources = set()
    for r in dead:
        letter = DeadLetter.from_message(r.key, r.value, list(r.headers))
        coordinates = (letter.source_topic, letter.source_partition, letter.source_offset)
        assert inputs[coordinates] == r.value
        sources.add(letter.source_topic)
        assert letter.step == "b"
        assert letter.attempt == (1 if letter.source_topic == topics.step("b") else 2), letter
    # Refused at once on the record run in place; exhausted on the retry topic's record.
    assert sources == {topics.step("b"), topics.retry("b", 1)}


async def test_records_another_worker_marked_in_place_are_processed(kafka, pipeline_name):
    """A mark names the worker that runs the record: to any other worker (another member of
    the group, or this worker after a restart) it is an ordinary record."""
    pipeline = _chain(pipeline_name)
    topics = PipelineTopics(pipeline.name)
    n = 50
    producer = KafkaConnection.of(kafka).producer()
    await producer.start()
    try:
        async with Worker(pipeline, _on(kafka)) as worker:
            await _holding_everything(worker, kafka, [topics.step("b")])
            for i in range(n):
                env = Envelope(
                    request_id=f"{pipeline_name}-{i}",
                    pipeline=pipeline.name,
                    step="b",
                    source="a",
                    kind="VALUE",
                    submitted_at=now_us() // 1000,
                    created_at=now_us(),
                    request='{"n": 0}',
                    payload=str(i),
                    path=["a"],
                )
                await producer.send_and_wait(
                    topics.step("b"),
                    env.encode(),
                    key=env.request_id.encode(),
                    headers=[(IN_PLACE_HEADER, b"a-worker-that-died")],
                )
            results, counts = await read_results(kafka, topics.results, n)
    finally:
        await producer.stop()
    assert sorted(counts.values()) == [1] * n
    assert {r.value["n"] for r in results.values()} == {i + 2 for i in range(n)}


async def test_a_second_worker_joining_mid_burst_loses_and_duplicates_no_answer(
    kafka, pipeline_name
):
    """The group rebalances while chains run in place: partitions a batch marked records for
    move to the other worker, which processes them (the marks are not its own)."""
    pipeline = _chain(pipeline_name)
    topics = PipelineTopics(pipeline.name)
    n = 1500
    async with Worker(pipeline, _on(kafka)) as first, WeirClient(kafka) as client:
        await _holding_everything(first, kafka, [topics.answers, topics.step("b")])
        ids = await client.submit_many(pipeline.name, [{"n": i} for i in range(n // 2)])
        async with Worker(pipeline, _on(kafka)) as second:
            ids += await client.submit_many(pipeline.name, [{"n": i} for i in range(n // 2, n)])
            results, counts = await read_results(kafka, topics.results, n)
            both = first.stats.received + second.stats.received
    assert set(results) == set(ids)
    assert [rid for rid, c in counts.items() if c > 1] == [], "some requests answered twice"
    for i, rid in enumerate(ids):
        assert results[rid].value == {"n": i + 3}, results[rid]
    assert both >= 3 * n  # every request and both step inputs, at least once
    marked = await read_topic(kafka, topics.step("c"), idle_s=0.5)
    assert len(marked) >= n
    await _committed_to_the_end(
        kafka, topics.consumer_group, [topics.requests, topics.step("b"), topics.step("c")]
    )


def _landing() -> Landing:
    env = Envelope(
        request_id="r1",
        pipeline="p",
        step="b",
        source="a",
        kind="VALUE",
        submitted_at=0,
        created_at=0,
        request="{}",
        payload="1",
        path=["a"],
    )
    message = OutMessage("p.step.b", b"r1", env.encode(), [(IN_PLACE_HEADER, b"t")], 2)
    return Landing(message, env, "b", 2)


async def test_a_record_run_ahead_gets_its_offset_on_the_same_object_when_it_lands():
    landing = _landing()
    record = landing.record()
    assert (record.partition, record.offset) == (2, -1)
    waiting = asyncio.create_task(landing.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    landing.landed(2, 42)
    await asyncio.wait_for(waiting, 1)
    assert landing.record() is record
    assert (record.partition, record.offset) == (2, 42)


async def test_a_wait_on_a_record_that_never_lands_ends_with_its_send():
    landing = _landing()
    waiting = asyncio.create_task(landing.wait())
    await asyncio.sleep(0)
    landing.settle()  # the send is over (refused, abandoned): no acknowledgement comes
    await asyncio.wait_for(waiting, 1)
    assert landing.record().offset == -1
    await asyncio.wait_for(landing.wait(), 1)  # settled: returns at once
