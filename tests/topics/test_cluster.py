"""A 3-broker KRaft cluster (three broker processes from the same jars): weir's topics get
3 replicas and min.insync.replicas 2, and killing a leading broker mid-run loses nothing and
answers nothing twice."""

from __future__ import annotations

import collections
from collections.abc import Iterator

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests._kafka import read_results
from tests._pipelines import linear
from weir.core.config import BrokerSettings, WeirSettings, load_settings
from weir.core.kafka import KafkaConnection
from weir.streams import WeirClient, Worker
from weir.topics.broker import LocalBroker, free_port_pair, new_cluster_id
from weir.topics.names import PipelineTopics

pytestmark = pytest.mark.kafka

N = 2000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalBroker]]:
    ports = {node: free_port_pair() for node in (1, 2, 3)}
    # free_port_pair checks one pair at a time: make sure the three do not overlap.
    assert len({p for port in ports.values() for p in (port, port + 1)}) == 6
    cluster_id = new_cluster_id()
    brokers = [
        LocalBroker(
            load_settings(broker=BrokerSettings(port=port, heap="384m", start_timeout_s=240)),
            state_dir=tmp_path_factory.mktemp(f"node{node}"),
            node_id=node,
            voters=ports,
            cluster_id=cluster_id,
        )
        for node, port in ports.items()
    ]
    try:
        for broker in brokers:  # a quorum needs two voters before any broker is ready
            broker.start(wait=False)
        for broker in brokers:
            broker.wait_ready()
        yield brokers
    finally:
        for broker in brokers:
            broker.stop()


def _settings(cluster: list[LocalBroker]) -> WeirSettings:
    return load_settings(
        kafka_bootstrap=",".join(b.bootstrap for b in cluster),
        partitions=4,
        commit_interval_s=0.5,
        shutdown_timeout_s=15.0,
        step_timeout_s=30.0,
        web_port=0,
    )


async def _leaders(settings: WeirSettings, topics: list[str]) -> collections.Counter[int]:
    admin = KafkaConnection.of(settings).admin()
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    leaders: collections.Counter[int] = collections.Counter()
    for topic in described:
        for partition in topic["partitions"]:
            assert len(partition["replicas"]) == 3, partition  # replication 3 by default
            leaders[partition["leader"]] += 1
    return leaders


async def _min_insync(settings: WeirSettings, topic: str) -> str:
    """The topic's ``min.insync.replicas`` as the cluster reports it."""
    admin = KafkaConnection.of(settings).admin()
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"min.insync.replicas": None})]
        )
    finally:
        await admin.close()
    for response in responses:
        for resource in response.to_object()["resources"]:
            for entry in resource["config_entries"]:
                if entry["config_names"] == "min.insync.replicas":
                    return str(entry["config_value"])
    raise AssertionError(f"no min.insync.replicas in {responses}")


async def test_killing_the_leading_broker_mid_run_answers_every_request_exactly_once(
    cluster, pipeline_name
):
    settings = _settings(cluster)
    topics = PipelineTopics(pipeline_name)
    async with Worker(linear(pipeline_name), settings), WeirClient(settings) as client:
        leaders = await _leaders(settings, [topics.requests, topics.results])
        victim = next(b for b in cluster if b.node_id == leaders.most_common(1)[0][0])
        payloads = [{"text": "a b c", "n": i} for i in range(N)]
        first = await client.submit_many(pipeline_name, payloads[: N // 2])
        victim.kill()  # kill -9, as a crash: no controlled leadership hand-over
        second = await client.submit_many(pipeline_name, payloads[N // 2 :])
        results, counts = await read_results(settings, topics.results, N, timeout=300)
    assert victim.status().running is False
    assert set(results) == set(first) | set(second)
    assert len(results) == N
    assert max(counts.values()) == 1, [rid for rid, c in counts.items() if c > 1][:5]
    assert {r.status for r in results.values()} == {"SUCCESS"}
    assert await _min_insync(settings, topics.results) == "2"
