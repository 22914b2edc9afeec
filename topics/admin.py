"""Create, list and check topics on the cluster."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupCoordinatorNotAvailableError,
    KafkaConnectionError,
    KafkaError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)
from tenacity import AsyncRetrying, retry_if_exception_type, wait_fixed

from weir.core.config import WeirSettings
from weir.core.errors import BrokerError, ConfigError
from weir.core.kafka import KafkaConnection
from weir.topics._aiokafka import stop_consumer
from weir.topics.names import TopicSpec

__all__ = ["TopicAdmin", "TopicPlan"]

_DEFAULT_REPLICATION = 3
"""Replicas when none is configured: one broker may fail, and one more be restarted."""


@dataclass(frozen=True)
class TopicPlan:
    """A topic as ``TopicAdmin.ensure`` would create it, replication resolved."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]
    exists: bool


class TopicAdmin:
    """Topic management on ``settings.bootstrap_servers``; use as ``async with``."""

    def __init__(self, settings: WeirSettings) -> None:
        self._settings = settings
        self._client: AIOKafkaAdminClient | None = None

    async def __aenter__(self) -> TopicAdmin:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._client is not None:
            return
        kafka = KafkaConnection.of(self._settings)
        client = kafka.admin(request_timeout_ms=15000)
        try:
            await client.start()
        except BaseException as exc:
            await client.close()
            if isinstance(exc, KafkaConnectionError):
                raise await kafka.unavailable(exc) from exc
            raise
        self._client = client

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def _admin(self) -> AIOKafkaAdminClient:
        if self._client is None:
            raise RuntimeError("TopicAdmin is not started")
        return self._client

    async def partitions(self, names: Iterable[str] | None = None) -> dict[str, int]:
        """Partition count of each existing topic (of ``names``, when given)."""
        wanted = None if names is None else set(names)
        metadata = await self._admin.describe_topics(None if wanted is None else list(wanted))
        out = {}
        for topic in metadata:
            if topic.get("error_code", 0) != 0:
                continue
            if wanted is None or topic["topic"] in wanted:
                out[topic["topic"]] = len(topic["partitions"])
        return out

    async def group_members(self, group: str) -> int:
        """Live members of consumer group ``group`` (0 when it has none or does not exist)."""
        try:
            responses = await self._admin.describe_consumer_groups([group])
        except GroupCoordinatorNotAvailableError:  # no member has joined it yet
            return 0
        for response in responses:
            for described in response.groups:
                error_code, group_id, state = described[0], described[1], described[2]
                if group_id == group and not error_code and state != "Dead":
                    return len(described[5])
        return 0

    async def list(self) -> dict[str, int]:
        """All topics except Kafka's internal ones, with their partition counts."""
        names = [t for t in await self._admin.list_topics() if not t.startswith("__")]
        return await self.partitions(sorted(names)) if names else {}

    async def plan(self, specs: Iterable[TopicSpec]) -> builtins.list[TopicPlan]:
        """What ``ensure`` would do: each topic with its replication and ``min.insync.replicas``
        resolved against the cluster's size, and whether it exists already.

        Raises ``ConfigError`` when the replication asked for needs more brokers than the
        cluster has, or ``min_insync_replicas`` exceeds it.
        """
        cluster = await self._admin.describe_cluster()
        brokers = max(1, len(cluster.get("brokers", [])))
        existing = set(await self._admin.list_topics())
        wanted_isr = self._settings.min_insync_replicas
        out = []
        for s in specs:
            exists = s.name in existing
            rf = s.replication_factor or min(_DEFAULT_REPLICATION, brokers)
            # Only topics to be created are checked: a broker down while the topics exist
            # must not stop a worker from starting.
            if rf > brokers and not exists:
                raise ConfigError(
                    f"replication_factor {rf} needs {rf} brokers but the cluster at"
                    f" {self._settings.bootstrap_servers} has {brokers}; lower"
                    " WEIR_REPLICATION_FACTOR (or unset it: 3, or fewer on a smaller cluster)"
                )
            isr = wanted_isr if wanted_isr is not None else max(1, rf - 1)
            if isr > rf and not exists:
                raise ConfigError(
                    f"min_insync_replicas {isr} is above the replication factor {rf} of"
                    f" {s.name}: no write could succeed; lower WEIR_MIN_INSYNC_REPLICAS"
                )
            config = {"min.insync.replicas": str(isr), **s.config}
            out.append(TopicPlan(s.name, s.partitions, rf, config, exists))
        return out

    async def ensure(self, specs: Iterable[TopicSpec]) -> builtins.list[str]:
        """Create the missing topics; return their names.

        Raises ``ConfigError`` when an existing topic has a different partition
        count, because keys would then map to other partitions than weir expects.
        """
        specs = list(specs)
        plans = {p.name: p for p in await self.plan(specs)}
        existing = {name for name, p in plans.items() if p.exists}
        if present := [s for s in specs if s.name in existing]:
            counts = await self.partitions(s.name for s in present)
            for s in present:
                if s.keyed and counts.get(s.name, s.partitions) != s.partitions:
                    raise ConfigError(
                        f"topic {s.name} has {counts[s.name]} partitions but weir is configured"
                        f" for {s.partitions} (WEIR_PARTITIONS); use the same count or recreate"
                        " the topic"
                    )
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        new = [
            NewTopic(p.name, p.partitions, p.replication_factor, topic_configs=p.config)
            for p in (plans[s.name] for s in missing)
        ]
        try:
            response = await self._admin.create_topics(new, timeout_ms=30000)
        except TopicAlreadyExistsError:
            return []  # another worker created them concurrently
        except KafkaError as exc:
            raise BrokerError(f"could not create topics: {exc}") from exc
        errors = [(n, c, m) for n, c, m in _errors(response) if c not in _CREATED]
        if denied := [n for n, c, _ in errors if c in _NOT_AUTHORIZED]:
            raise BrokerError(
                f"the cluster does not allow {self._settings.kafka_sasl_username or 'this client'}"
                " to create topics (ACLs). Grant CREATE on them, or have an operator create:\n"
                + "\n".join(_describe(plans[n]) for n in denied if n in plans)
            )
        for name, code, message in errors:
            raise BrokerError(f"could not create topic {name}: error {code} {message or ''}")
        await self._wait_for_leaders([s.name for s in missing])
        return [s.name for s in missing]

    async def _wait_for_leaders(self, names: builtins.list[str], timeout: float = 30.0) -> None:
        # A new topic's partitions answer NOT_LEADER for a moment after creation, even once
        # metadata names a leader; a consumer that starts then can sit on the partition
        # without fetching (aiokafka).  Wait until every partition answers ListOffsets.
        # First until metadata lists every new topic: a busy broker may describe a topic it
        # has just created as unknown, and a consumer that subscribed then would not see
        # it before its next metadata refresh (minutes).
        async with asyncio.timeout(timeout):
            counts = await self.partitions(names)
            while len(counts) < len(set(names)):
                await asyncio.sleep(0.1)
                counts = await self.partitions(names)
        tps = [TopicPartition(n, p) for n, c in counts.items() for p in range(c)]
        probe = KafkaConnection.of(self._settings).consumer(request_timeout_ms=5000)
        await probe.start()
        try:
            async with asyncio.timeout(timeout):
                answered = AsyncRetrying(
                    retry=retry_if_exception_type(KafkaError), wait=wait_fixed(0.1)
                )
                async for attempt in answered:
                    with attempt:
                        await probe.end_offsets(tps)
                        await probe.beginning_offsets(tps)
        finally:
            await stop_consumer(probe)

    async def delete(self, names: Iterable[str]) -> None:
        await self._admin.delete_topics(list(names))


def _errors(response: object) -> list[tuple[str, int, str | None]]:
    out = []
    for item in getattr(response, "topic_errors", []):
        name, code, *rest = item
        out.append((name, code, rest[0] if rest else None))
    return out


_CREATED = (0, TopicAlreadyExistsError.errno)
_NOT_AUTHORIZED = (TopicAuthorizationFailedError.errno, ClusterAuthorizationFailedError.errno)


def _describe(plan: TopicPlan) -> str:
    """One topic as an operator would create it (``kafka-topics.sh`` flags)."""
    configs = " ".join(f"--config {k}={v}" for k, v in sorted(plan.config.items()))
    return (
        f"  {plan.name} --partitions {plan.partitions}"
        f" --replication-factor {plan.replication_factor} {configs}"
    )
