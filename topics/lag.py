"""A pipeline's consumer lag, group-wide: per step, per partition, from the broker's records.

Lag is what the pipeline's consumer group has not committed yet: the end of
each partition it reads minus the group's committed offset (the partition's
first offset where nothing is committed).  Workers commit a record only once
it is finished, so work waiting for an endpoint (limits, batching, a slow
model) shows up here as lag, whatever worker holds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import TopicPartition

from weir.core.config import WeirSettings
from weir.core.kafka import KafkaConnection
from weir.topics._aiokafka import stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import ANSWER, INGRESS, PipelineTopics

__all__ = ["PartitionLag", "group_members", "pipeline_lag", "step_of"]


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


async def pipeline_lag(settings: WeirSettings, pipeline: str) -> list[PartitionLag]:
    """Every partition the pipeline's group reads, with its committed offset and end."""
    topics = PipelineTopics(pipeline)
    async with TopicAdmin(settings) as admin:
        counts = await admin.partitions()
        committed_raw = await admin._admin.list_consumer_group_offsets(topics.consumer_group)
    read = {t: step_of(topics, t) for t in counts}
    tps = [TopicPartition(t, p) for t, step in read.items() if step for p in range(counts[t])]
    if not tps:
        return []
    committed = {tp: meta.offset for tp, meta in committed_raw.items() if meta.offset >= 0}
    consumer = KafkaConnection.of(settings).consumer()
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
    finally:
        await stop_consumer(consumer)
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


async def group_members(settings: WeirSettings, pipeline: str) -> int:
    """Live workers of the pipeline (members of its consumer group)."""
    async with TopicAdmin(settings) as admin:
        return await admin.group_members(PipelineTopics(pipeline).consumer_group)
