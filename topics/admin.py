"""Create, list and check topics on the cluster."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    GroupCoordinatorNotAvailableError,
    KafkaConnectionError,
    KafkaError,
    TopicAlreadyExistsError,
)

from weir.core.config import WeirSettings
from weir.core.errors import BrokerError, ConfigError
from weir.topics._aiokafka import stop_consumer
from weir.topics.names import TopicSpec

__all__ = ["TopicAdmin"]


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
        client = AIOKafkaAdminClient(
            bootstrap_servers=self._settings.bootstrap_servers, request_timeout_ms=15000
        )
        try:
            await client.start()
        except KafkaConnectionError as exc:
            await client.close()
            raise BrokerError(
                f"cannot reach Kafka at {self._settings.bootstrap_servers}: {exc}. Start the"
                " local broker with 'weir broker start' or set WEIR_KAFKA_BOOTSTRAP"
            ) from exc
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

    async def ensure(self, specs: Iterable[TopicSpec]) -> builtins.list[str]:
        """Create the missing topics; return their names.

        Raises ``ConfigError`` when an existing topic has a different partition
        count, because keys would then map to other partitions than weir expects.
        """
        specs = list(specs)
        existing = set(await self._admin.list_topics())
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
            NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.config)
            for s in missing
        ]
        try:
            response = await self._admin.create_topics(new, timeout_ms=30000)
        except TopicAlreadyExistsError:
            return []  # another worker created them concurrently
        except KafkaError as exc:
            raise BrokerError(f"could not create topics: {exc}") from exc
        for name, code, message in _errors(response):
            if code not in (0, TopicAlreadyExistsError.errno):
                raise BrokerError(f"could not create topic {name}: error {code} {message or ''}")
        await self._wait_for_leaders([s.name for s in missing])
        return [s.name for s in missing]

    async def _wait_for_leaders(self, names: builtins.list[str], timeout: float = 30.0) -> None:
        # A new topic's partitions answer NOT_LEADER for a moment after creation, even once
        # metadata names a leader; a consumer that starts then can sit on the partition
        # without fetching (aiokafka).  Wait until every partition answers ListOffsets.
        counts = await self.partitions(names)
        tps = [TopicPartition(n, p) for n, c in counts.items() for p in range(c)]
        probe = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap_servers, request_timeout_ms=5000
        )
        await probe.start()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        await probe.end_offsets(tps)
                        await probe.beginning_offsets(tps)
                        return
                    except KafkaError:
                        await asyncio.sleep(0.1)
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
