"""A pipeline's consumer lag, group-wide: per step, per partition, from the broker's records.

Lag is what the pipeline's consumer group has not committed yet: the end of
each partition it reads minus the group's committed offset (the partition's
first offset where nothing is committed).  Workers commit a record only once
it is finished, so work waiting for an endpoint (limits, batching, a slow
model) shows up here as lag, whatever worker holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from weir.core.config import WeirSettings
from weir.core.kafka import KafkaConnection
from weir.topics._aiokafka import stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import ANSWER, INGRESS, PipelineTopics

__all__ = [
    "LagReader",
    "PartitionLag",
    "group_members",
    "lag_report",
    "pipeline_lag",
    "step_lags",
    "step_of",
]


@dataclass(frozen=True, slots=True)
class PartitionLag:
    step: str
    """The step reading the topic (``requests`` for the ingress, ``_answer`` for answers)."""
    topic: str
    partition: int
    committed: int | None
    """The group's committed offset; ``None`` before its first commit."""
    start: int
    """The partition's first offset (where the group starts when nothing is committed)."""
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - (self.committed if self.committed is not None else self.start))


def step_of(topics: PipelineTopics, topic: str) -> str | None:
    """Which stage of the pipeline consumes ``topic`` (``None``: the group does not read it).

    >>> t = PipelineTopics("p")
    >>> step_of(t, "weir.p.step.embed"), step_of(t, "weir.p.retry.embed.2"), step_of(t, t.results)
    ('embed', 'embed', None)
    """
    base = f"{topics.prefix}.{topics.pipeline}."
    if not topic.startswith(base):
        return None
    rest = topic[len(base) :]
    if topic == topics.requests:
        return INGRESS
    if topic == topics.answers:
        return ANSWER
    kind, _, name = rest.partition(".")
    if kind == "step" and name:
        return name
    if kind == "retry" and name:
        return name.rpartition(".")[0] or name
    return None


class LagReader:
    """Reads pipelines' lag over one admin and one consumer connection, kept open.

    For a caller that asks again and again (a worker's routing rules, its dashboard);
    ``pipeline_lag`` asks once.
    """

    def __init__(self, settings: WeirSettings) -> None:
        self._settings = settings
        self._admin: TopicAdmin | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> LagReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def read(self, pipeline: str) -> list[PartitionLag]:
        """Every partition the pipeline's group reads, with its committed offset and end."""
        if self._admin is None:
            admin = TopicAdmin(self._settings)
            await admin.start()
            self._admin = admin
        if self._consumer is None:
            consumer = KafkaConnection.of(self._settings).consumer()
            await consumer.start()
            self._consumer = consumer
        topics = PipelineTopics(pipeline)
        admin, consumer = self._admin, self._consumer
        counts = await admin.partitions()
        committed_raw = await admin._admin.list_consumer_group_offsets(topics.consumer_group)
        read = {t: step_of(topics, t) for t in counts}
        tps = [TopicPartition(t, p) for t, step in read.items() if step for p in range(counts[t])]
        if not tps:
            return []
        committed = {tp: meta.offset for tp, meta in committed_raw.items() if meta.offset >= 0}
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        return [
            PartitionLag(
                step=read[tp.topic] or "",
                topic=tp.topic,
                partition=tp.partition,
                committed=committed.get(tp),
                start=starts[tp],
                end=ends[tp],
            )
            for tp in sorted(tps, key=lambda tp: (tp.topic, tp.partition))
        ]

    async def group_members(self, group: str) -> int:
        """Live members of consumer group ``group``."""
        if self._admin is None:
            admin = TopicAdmin(self._settings)
            await admin.start()
            self._admin = admin
        return await self._admin.group_members(group)

    async def aclose(self) -> None:
        admin, self._admin = self._admin, None
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_consumer(consumer)
        if admin is not None:
            await admin.stop()


def step_lags(rows: list[PartitionLag]) -> dict[str, int]:
    """Lag per step, summed over its partitions (and its retry topics').

    >>> step_lags([PartitionLag("a", "t", 0, 3, 0, 10), PartitionLag("a", "t", 1, None, 2, 4)])
    {'a': 9}
    """
    out: dict[str, int] = {}
    for row in rows:
        out[row.step] = out.get(row.step, 0) + row.lag
    return out


def lag_report(pipeline: str, rows: list[PartitionLag], members: int) -> dict[str, Any]:
    """The lag as JSON: what ``weir lag --json`` prints and the dashboard's ``/api/lag`` serves."""
    return {
        "pipeline": pipeline,
        "workers": members,
        "total": sum(r.lag for r in rows),
        "steps": step_lags(rows),
        "partitions": [
            {
                "step": r.step,
                "topic": r.topic,
                "partition": r.partition,
                "committed": r.committed,
                "end": r.end,
                "lag": r.lag,
            }
            for r in rows
        ],
    }


async def pipeline_lag(settings: WeirSettings, pipeline: str) -> list[PartitionLag]:
    """Every partition the pipeline's group reads, with its committed offset and end."""
    async with LagReader(settings) as reader:
        return await reader.read(pipeline)


async def group_members(settings: WeirSettings, pipeline: str) -> int:
    """Live workers of the pipeline (members of its consumer group)."""
    async with TopicAdmin(settings) as admin:
        return await admin.group_members(PipelineTopics(pipeline).consumer_group)
