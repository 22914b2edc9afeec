"""Per-hop latency for ``weir bench``: from a record's append on one topic to the next's.

A request crosses the same hops in both systems: ``requests -> step2 -> step3 -> results``
for weir (step 1 runs in the ingress, step 3's answer is written to the results topic by
the answer stage in this process) and ``t0 -> t1 -> t2 -> t3`` for the chain.  Every
record of a request carries its id as its key, so the driver reads each topic back after
the unloaded probe and, for each probe request, subtracts the record timestamps
(milliseconds, set by the producer that wrote it) of consecutive topics.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from aiokafka import TopicPartition

from weir.bench_measures import percentile
from weir.bench_systems import PARTITIONS
from weir.core.kafka import KafkaConnection
from weir.topics._aiokafka import read_until, retrying, rewind, stop_consumer

__all__ = ["hop_figures", "hop_latencies", "weir_hop_topics"]


def weir_hop_topics(pipeline: object) -> list[str]:
    """The topics a request of ``pipeline`` (a line of steps) is written to, in order."""
    from weir.streams.pipeline import Pipeline
    from weir.topics.names import PipelineTopics

    assert isinstance(pipeline, Pipeline)
    t = PipelineTopics(pipeline.name)
    # The first step runs in the ingress, on the request's record: it has no topic of its own.
    return [t.requests, *(t.step(s) for s in pipeline.order[1:]), t.results]


async def _timestamps(bootstrap: str, topic: str, keys: set[bytes]) -> dict[bytes, int]:
    """The timestamp of the first record of each of ``keys`` on ``topic`` (all partitions)."""
    consumer = KafkaConnection(bootstrap=bootstrap).consumer(
        enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    found: dict[bytes, int] = {}
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await rewind(consumer, tps)
        ends = await retrying(lambda: consumer.end_offsets(tps), what=f"reading {topic} ends")
        for tp in tps:
            async for record in read_until(consumer, tp, ends[tp]):
                if record.key in keys and record.key not in found:
                    found[record.key] = record.timestamp
    finally:
        await stop_consumer(consumer)
    return found


async def hop_latencies(
    bootstrap: str, topics: list[str], keys: Iterable[bytes]
) -> list[list[float]]:
    """Per hop ``topics[i] -> topics[i + 1]``: the latencies (ms) of the requests ``keys``.

    A request missing from either topic of a hop is left out of that hop.
    """
    wanted = set(keys)
    stamps = [await _timestamps(bootstrap, topic, wanted) for topic in topics]
    return [
        [float(after[k] - before[k]) for k in wanted if k in before and k in after]
        for before, after in itertools.pairwise(stamps)
    ]


def hop_figures(hops: list[list[float]]) -> tuple[list[float], list[float]]:
    """``(p50 per hop, p99 per hop)`` in ms (``nan`` for a hop without samples)."""
    p50 = [round(percentile(h, 50), 2) if h else float("nan") for h in hops]
    p99 = [round(percentile(h, 99), 2) if h else float("nan") for h in hops]
    return p50, p99
