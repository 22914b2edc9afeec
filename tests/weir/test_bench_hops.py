"""Per-hop latency of ``weir bench``: record timestamps of consecutive topics, per request."""

from __future__ import annotations

import math
import time
import uuid

import pytest

from weir.bench_hops import hop_figures, hop_latencies, weir_hop_topics
from weir.bench_measures import percentile
from weir.bench_systems import PARTITIONS, linear_pipeline
from weir.core.kafka import KafkaConnection
from weir.topics.admin import TopicAdmin
from weir.topics.names import TopicSpec

pytestmark = pytest.mark.kafka


def test_weir_hops_skip_the_first_step_run_in_the_ingress():
    topics = weir_hop_topics(linear_pipeline("p"))
    assert topics == ["weir.p.requests", "weir.p.step.step2", "weir.p.step.step3", "weir.p.results"]


def test_hop_figures_are_the_benchs_percentiles_and_nan_without_samples():
    values = [float(i) for i in range(100, 0, -1)]
    p50, p99 = hop_figures([values, []])
    assert p50[0] == percentile(values, 50) == 50
    assert p99[0] == percentile(values, 99) >= 99
    assert math.isnan(p50[1]) and math.isnan(p99[1])


async def test_hop_latencies_subtract_the_timestamps_of_a_requests_records_hop_by_hop(kafka):
    topics = [f"hops-{uuid.uuid4().hex[:6]}-t{i}" for i in range(3)]
    async with TopicAdmin(kafka) as admin:
        await admin.ensure(TopicSpec(t, PARTITIONS, 1) for t in topics)
    producer = KafkaConnection.of(kafka).producer()
    await producer.start()
    try:
        base = int(time.time() * 1000)
        for i, key in enumerate([b"a", b"b", b"c"]):
            # a: 5 ms then 7 ms; b: 10 then 14; c never reaches the last topic.
            stamps = [base, base + 5 * (i + 1), base + 5 * (i + 1) + 7 * (i + 1)]
            for topic, stamp in zip(topics, stamps[: 2 if key == b"c" else 3], strict=False):
                await producer.send_and_wait(topic, b"{}", key=key, timestamp_ms=stamp)
        # Another request, not probed: left out.
        await producer.send_and_wait(topics[0], b"{}", key=b"other", timestamp_ms=base)
    finally:
        await producer.stop()
    hops = await hop_latencies(kafka.bootstrap_servers, topics, [b"a", b"b", b"c"])
    assert sorted(hops[0]) == [5.0, 10.0, 15.0]
    assert sorted(hops[1]) == [7.0, 14.0]
