"""Fan-in: partial inputs of a step, kept per request id in a changelog-backed table."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.messages import Envelope
from topics._aiokafka import rewind, stop_consumer

__all__ = ["JoinTable"]

Send = Callable[[str, int, bytes, bytes | None], Awaitable[None]]
"""Sends ``(topic, partition, key, value)`` and waits for the broker's ack."""


class JoinTable:
    """Inputs that arrived for a join step, by input partition and request id.

    Every change is written to a compacted changelog topic, partition for
    partition with the step's input topic, before the input message counts as
    done; a completed join leaves a tombstone, so the table stays bounded.  When
    a worker is assigned an input partition it rebuilds that partition's part
    of the table from the changelog before processing any message from it.

    Only the event loop's own thread touches the table, and ``offer`` is
    synchronous, so exactly one of several concurrent inputs completes a join.
    """

    def __init__(self, step: str, expected: Iterable[str], changelog: str, send: Send) -> None:
        self.step = step
        self.expected = frozenset(expected)
        self.changelog = changelog
        self._send = send
        self._parts: dict[int, dict[str, dict[str, Envelope]]] = {}

    def offer(self, partition: int, envelope: Envelope) -> dict[str, Envelope] | None:
        """Add one input; return all inputs when this one completes the join."""
        pending = self._parts.setdefault(partition, {})
        got = pending.setdefault(envelope.request_id, {})
        got[envelope.source] = envelope
        if self.expected.issubset(got):
            del pending[envelope.request_id]
            return got
        return None

    def waiting(self, partition: int, request_id: str) -> dict[str, Envelope] | None:
        return self._parts.get(partition, {}).get(request_id)

    async def persist(self, partition: int, request_id: str) -> None:
        """Write the request's current partial inputs to the changelog."""
        got = self.waiting(partition, request_id)
        if got is None:
            return  # completed meanwhile by another input; its tombstone follows
        value = json.dumps({src: dataclasses.asdict(env) for src, env in got.items()})
        await self._send(self.changelog, partition, request_id.encode(), value.encode())

    async def clear(self, partition: int, request_id: str) -> None:
        """Tombstone a completed join in the changelog."""
        await self._send(self.changelog, partition, request_id.encode(), None)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns."""
        for p in partitions:
            self._parts.pop(p, None)

    def size(self) -> int:
        return sum(len(v) for v in self._parts.values())

    async def restore(self, bootstrap: str, partitions: Iterable[int]) -> int:
        """Rebuild ``partitions`` from the changelog; return how many joins are waiting."""
        partitions = list(partitions)
        if not partitions:
            return 0
        tps = [TopicPartition(self.changelog, p) for p in partitions]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            end = await consumer.end_offsets(tps)
            await rewind(consumer, tps)
            for tp in tps:
                table = self._parts.setdefault(tp.partition, {})
                table.clear()
                while await consumer.position(tp) < end[tp]:
                    batch = await consumer.getmany(tp, timeout_ms=1000)
                    for record in batch.get(tp, []):
                        if record.offset >= end[tp] or record.key is None:
                            continue
                        request_id = record.key.decode()
                        if record.value is None:
                            table.pop(request_id, None)
                        else:
                            raw = json.loads(record.value)
                            table[request_id] = {
                                src: Envelope(**fields) for src, fields in raw.items()
                            }
        finally:
            await stop_consumer(consumer)
        return sum(len(self._parts.get(p, {})) for p in partitions)
