"""State kept per input partition and request id, mirrored on a compacted changelog."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from aiokafka import TopicPartition

from weir.core.kafka import KafkaConnection
from weir.topics._aiokafka import read_until, retrying, rewind, started_consumer, stop_consumer

__all__ = ["ChangelogTable"]

V = TypeVar("V")


class ChangelogTable(Generic[V]):
    """In-memory ``{partition: {request id: value}}`` rebuilt from a compacted changelog.

    The changelog is partitioned like the input topic the state belongs to, so
    a worker that is assigned input partition N restores changelog partition N
    and nothing else.  Writing changes is the owner's business (plainly, or in
    a transaction); this class keeps memory and the restore.
    """

    def __init__(
        self,
        changelog: str,
        encode: Callable[[V], bytes],
        decode: Callable[[bytes], V],
        *,
        max_per_partition: int | None = None,
    ) -> None:
        self.changelog = changelog
        self.encode = encode
        self._decode = decode
        self._parts: dict[int, dict[str, V]] = {}
        self.ends: dict[int, int] = {}
        """Per partition, the changelog offset up to which the last restore read."""
        self.max_per_partition = max_per_partition
        """Entries kept in memory per partition; past it the oldest are forgotten (in memory
        only: the changelog keeps them, and what forgetting means is the owner's to say)."""
        self.evicted = 0
        """Entries forgotten because of ``max_per_partition`` since start."""

    def get(self, partition: int, key: str) -> V | None:
        part = self._parts.get(partition)
        return None if part is None else part.get(key)

    def put(self, partition: int, key: str, value: V) -> None:
        """Set ``key``, moving it to the newest end of the partition's order."""
        part = self._parts.setdefault(partition, {})
        part.pop(key, None)
        part[key] = value
        self._trim(part)

    def _trim(self, part: dict[str, V]) -> None:
        if self.max_per_partition is not None:
            while len(part) > self.max_per_partition:
                del part[next(iter(part))]  # the oldest write
                self.evicted += 1

    def size(self, partition: int) -> int:
        """Entries held in memory for ``partition``."""
        return len(self._parts.get(partition, {}))

    def pop(self, partition: int, key: str) -> V | None:
        part = self._parts.get(partition)
        return None if part is None else part.pop(key, None)

    def items(self, partition: int) -> Iterator[tuple[str, V]]:
        """A snapshot of one partition's entries, oldest insertion first."""
        return iter(list(self._parts.get(partition, {}).items()))

    def oldest(self, partition: int, expired: Callable[[V], bool], *, limit: int) -> list[str]:
        """Keys from the oldest end for which ``expired`` holds, stopping at the first that fails.

        Entries are kept in write order, so this is cheap when ``expired`` is "older than".
        """
        out: list[str] = []
        for key, value in self._parts.get(partition, {}).items():
            if len(out) >= limit or not expired(value):
                break
            out.append(key)
        return out

    def partitions(self) -> list[int]:
        return list(self._parts)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns."""
        for p in partitions:
            self._parts.pop(p, None)

    async def restore(
        self,
        kafka: KafkaConnection,
        partitions: Iterable[int],
        *,
        keep: Callable[[V], bool] | None = None,
    ) -> int:
        """Rebuild ``partitions`` from the changelog; return how many entries they hold.

        Entries for which ``keep`` is false (expired ones) are not loaded.
        """
        partitions = list(partitions)
        if not partitions:
            return 0
        tps = [TopicPartition(self.changelog, p) for p in partitions]
        consumer = await started_consumer(
            kafka,
            what=f"connecting to restore {self.changelog}",
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        try:
            consumer.assign(tps)
            # read_committed: the end is the last stable offset, so an open transaction of a
            # fenced owner is neither waited for nor read.
            end = await retrying(lambda: consumer.end_offsets(tps), what="reading changelog ends")
            await rewind(consumer, tps)
            for tp in tps:
                table: dict[str, V] = {}
                self._parts[tp.partition] = table
                self.ends[tp.partition] = end[tp]
                async for record in read_until(consumer, tp, end[tp]):
                    if record.key is None:
                        continue
                    key = record.key.decode()
                    # Re-insert so iteration order follows the latest write.
                    table.pop(key, None)
                    if record.value is None:
                        continue
                    value = self._decode(record.value)
                    if keep is None or keep(value):
                        table[key] = value
                        self._trim(table)
        finally:
            await stop_consumer(consumer)
        return sum(len(self._parts.get(p, {})) for p in partitions)
