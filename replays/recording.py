"""A step's recorded traffic: its inputs by time window, and what it produced live.

A root step runs in the ingress stage on the requests topic, so its recorded
inputs are the requests; a later step's inputs are its own step topic (a join
gathers one envelope per dependency, by request id).  What the step produced
live is on its dependents' step topics (or the answers topic for a final
step): envelopes whose ``source`` is the step, carrying its output and the
model calls it made.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from weir.core.config import WeirSettings
from weir.core.errors import MessageError
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import Envelope, ModelCall, Request, Result, now_us
from weir.streams.pipeline import Pipeline
from weir.topics._aiokafka import read_until, retrying, stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics

__all__ = [
    "Baseline",
    "PartitionRange",
    "RecordedInput",
    "Recording",
    "read_outputs",
    "read_since",
]


@dataclass(frozen=True)
class PartitionRange:
    """Offsets ``[start, stop)`` of one partition of the recorded topic."""

    partition: int
    start: int
    stop: int


@dataclass(frozen=True)
class RecordedInput:
    """One recorded input of the step, ready to run it again."""

    request_id: str
    partition: int
    offset: int
    """Of the record that completed the input (a join's last dependency)."""
    timestamp: int
    envelope: Envelope
    inputs: dict[str, str | None] = field(default_factory=dict)
    """Each dependency's output as JSON text, by step name (empty for a root step)."""


@dataclass
class Baseline:
    """What the step produced live for one request, from its recorded outputs."""

    request_id: str
    output: str | None
    calls: list[ModelCall]
    """The step's own model calls (of its successful attempt)."""


class Recording:
    """The recorded traffic of step ``step`` of ``pipeline``."""

    def __init__(self, settings: WeirSettings, pipeline: Pipeline, step: str) -> None:
        self._settings = settings
        self.pipeline = pipeline
        self.step = pipeline.steps[step]
        self.topics = PipelineTopics(pipeline.name)

    @property
    def topic(self) -> str:
        """Where the step's inputs are recorded."""
        if self.step.is_root:
            return self.topics.requests
        return self.topics.step(self.step.name)

    @property
    def output_topics(self) -> list[str]:
        """Where the step's live outputs are recorded.

        Its first dependent's input topic; for a final step, the answers topic and,
        when it is the pipeline's only final step, the results topic (a final output
        is answered in place, without the answers topic, when it can be).
        """
        name = self.step.name
        dependents = [s for s in self.pipeline.order if name in self.pipeline.steps[s].depends_on]
        if dependents:
            return [self.topics.step(dependents[0])]
        if self.pipeline.final_steps == (name,):
            return [self.topics.answers, self.topics.results]
        return [self.topics.answers]

    async def ranges(self, since_ms: int, until_ms: int | None) -> list[PartitionRange]:
        """Per partition, the offsets of records written in ``[since_ms, until_ms)``."""
        async with TopicAdmin(self._settings) as admin:
            count = (await admin.partitions([self.topic])).get(self.topic, 0)
        tps = [TopicPartition(self.topic, p) for p in range(count)]
        consumer = KafkaConnection.of(self._settings).consumer()
        await consumer.start()
        try:
            ends = await retrying(lambda: consumer.end_offsets(tps), what=f"ends of {self.topic}")
            starts = await retrying(
                lambda: consumer.offsets_for_times({tp: since_ms for tp in tps}),
                what=f"offsets of {self.topic} at {since_ms}",
            )
            stops = {}
            if until_ms is not None:
                stops = await retrying(
                    lambda: consumer.offsets_for_times({tp: until_ms for tp in tps}),
                    what=f"offsets of {self.topic} at {until_ms}",
                )
        finally:
            await stop_consumer(consumer)
        out = []
        for tp in tps:
            end = int(ends[tp])
            start = starts[tp].offset if starts.get(tp) is not None else end
            stop_at = stops.get(tp)
            stop = stop_at.offset if stop_at is not None else end
            out.append(PartitionRange(tp.partition, start, max(start, stop)))
        return out

    async def inputs(
        self, ranges: Iterable[PartitionRange], *, group: str | None = None
    ) -> AsyncIterator[tuple[RecordedInput | None, TopicPartition, int]]:
        """``(input, partition, next offset)`` for each record in ``ranges``, in offset order.

        ``input`` is ``None`` for a record that completes no runnable input (a
        skip, a join's first half, an unreadable record).  With ``group``, each
        partition starts at the group's committed offset when it has one, so a
        replay carries on where it stopped.
        """
        consumer = KafkaConnection.of(self._settings).consumer(
            group_id=group,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            for r in ranges:
                tp = TopicPartition(self.topic, r.partition)
                consumer.assign([tp])
                first = r.start
                if group is not None:
                    committed = await consumer.committed(tp)
                    if committed is not None:
                        first = max(first, committed)
                if first >= r.stop:
                    continue
                consumer.seek(tp, first)
                waiting: dict[str, dict[str, Envelope]] = {}
                async for record in read_until(consumer, tp, r.stop):
                    found = self._input(record.value, record.key, waiting)
                    if found is not None:
                        env, inputs = found
                        item = RecordedInput(
                            env.request_id,
                            r.partition,
                            record.offset,
                            record.timestamp,
                            env,
                            inputs,
                        )
                        yield item, tp, record.offset + 1
                    else:
                        yield None, tp, record.offset + 1
        finally:
            await stop_consumer(consumer)

    async def commit(self, consumer_group: str, positions: dict[TopicPartition, int]) -> None:
        """Remember ``positions`` as where replay group ``consumer_group`` carries on."""
        consumer = KafkaConnection.of(self._settings).consumer(
            group_id=consumer_group,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            consumer.assign(list(positions))
            await retrying(
                lambda: consumer.commit(dict(positions)), what=f"committing {consumer_group}"
            )
        finally:
            await stop_consumer(consumer)

    def _input(
        self, value: bytes | None, key: bytes | None, waiting: dict[str, dict[str, Envelope]]
    ) -> tuple[Envelope, dict[str, str | None]] | None:
        try:
            if self.step.is_root:
                request = Request.from_wire(
                    value,
                    pipeline=self.pipeline.name,
                    key=key,
                    max_bytes=self._settings.max_payload_bytes,
                )
                env = Envelope(
                    request_id=request.request_id,
                    pipeline=self.pipeline.name,
                    step=self.step.name,
                    source="",
                    kind="VALUE",
                    submitted_at=request.submitted_at,
                    created_at=now_us(),
                    request=json.dumps(request.payload, separators=(",", ":")),
                    payload=None,
                    options=request.options,
                )
                return env, {}
            if value is None:
                return None
            env = Envelope.decode(value)
        except MessageError:
            return None  # rejected live too: nothing the step ever ran on
        if env.step != self.step.name or env.kind == "FAILURE":
            return None
        if env.kind == "JOINED":
            return env, dict(env.inputs)
        if not self.step.is_join:
            return (env, {env.source: env.payload}) if env.kind == "VALUE" else None
        got = waiting.setdefault(env.request_id, {})
        got[env.source] = env
        if self.step.joins == "any" and env.kind == "VALUE":
            waiting.pop(env.request_id)
            return env, {env.source: env.payload}
        if set(got) < set(self.step.depends_on):
            return None
        waiting.pop(env.request_id)
        produced = {s: e.payload for s, e in got.items() if e.kind == "VALUE"}
        return (env, produced) if len(produced) == len(self.step.depends_on) else None

    async def baseline(self, request_ids: set[str], since_ms: int) -> dict[str, Baseline]:
        """What the step produced live for ``request_ids`` (absent: it produced nothing)."""
        return await read_outputs(
            self._settings,
            step=self.step.name,
            topics=self.output_topics,
            results_topic=self.topics.results,
            request_ids=request_ids,
            since_ms=since_ms,
        )


async def read_outputs(
    settings: WeirSettings,
    *,
    step: str,
    topics: Iterable[str],
    results_topic: str,
    request_ids: set[str],
    since_ms: int,
) -> dict[str, Baseline]:
    """``step``'s recorded outputs for ``request_ids`` on ``topics``, written since ``since_ms``."""
    out: dict[str, Baseline] = {}
    for topic in topics:
        async for value in read_since(settings, topic, since_ms):
            found = _output(step, value, results=topic == results_topic)
            if found is not None and found.request_id in request_ids:
                out.setdefault(found.request_id, found)  # the first is what the user got
    return out


def _output(step: str, value: bytes | None, *, results: bool) -> Baseline | None:
    if value is None:
        return None
    try:
        if results:
            result = Result.from_wire(value)
            if result.status != "SUCCESS":
                return None
            calls = [c for c in result.model_calls() if c.step == step]
            return Baseline(result.request_id, result.output, calls)
        env = Envelope.decode(value)
    except MessageError:
        return None
    if env.source != step or env.kind != "VALUE":
        return None
    return Baseline(env.request_id, env.payload, [c for c in env.calls if c.step == step])


async def read_since(
    settings: WeirSettings, topic: str, since_ms: int
) -> AsyncIterator[bytes | None]:
    """Values of ``topic``'s records written since ``since_ms``, partition by partition.

    Committed records only, up to the end as of each partition's start; a topic that
    does not exist has none.
    """
    async with TopicAdmin(settings) as admin:
        count = (await admin.partitions([topic])).get(topic, 0)
    consumer = KafkaConnection.of(settings).consumer(
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        for partition in range(count):
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            end = int((await consumer.end_offsets([tp]))[tp])
            found = (await consumer.offsets_for_times({tp: since_ms})).get(tp)
            if found is None or found.offset >= end:
                continue
            consumer.seek(tp, found.offset)
            async for record in read_until(consumer, tp, end):
                yield record.value
    finally:
        await stop_consumer(consumer)
