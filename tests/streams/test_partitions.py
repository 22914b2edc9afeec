"""The partitions a worker holds: which may start records, their tasks, slots and commits."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from weir.streams._partitions import Partitions

TP = TopicPartition("t", 0)
OTHER = TopicPartition("t", 1)


class _Consumer:
    """Records what is committed and says where each partition ends (no broker needed)."""

    def __init__(self, ends: dict[TopicPartition, int]) -> None:
        self.ends = ends
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.ends.get(tp)


def test_only_assigned_partitions_not_being_revoked_take_records() -> None:
    held = Partitions(4)
    held.add([TP])
    assert not held.takes(TP)  # added (tables restoring), not yet assigned
    held.assigned.add(TP)
    assert held.takes(TP)
    held.revoking.add(TP)
    assert not held.takes(TP)
    held.drop([TP])
    assert TP not in held.offsets and TP not in held.inflight and TP not in held.assigned


async def test_commits_stop_at_the_first_unfinished_record_and_are_not_repeated() -> None:
    held = Partitions(4)
    held.add([TP, OTHER])
    held.assigned |= {TP, OTHER}
    for offset in (10, 11, 12):
        held.offsets[TP].track(offset)
    held.offsets[TP].finish(10)
    held.offsets[TP].finish(12)
    consumer: Any = _Consumer({TP: 13})
    await held.commit(consumer)
    await held.commit(consumer)  # nothing new: no second commit
    assert consumer.commits == [{TP: 11}]
    assert held.lag(consumer, {"t"}) == 2  # 11 and 12 are not committable yet
    held.offsets[TP].finish(11)
    await held.commit(consumer, [TP])
    assert consumer.commits[-1] == {TP: 13}
    assert held.lag(consumer, {"t"}) == 0


async def test_a_finished_task_gives_back_its_slots_and_leaves_the_in_flight_set() -> None:
    held = Partitions(3)
    held.add([TP])
    for _ in range(3):
        await held.slots.acquire()
    assert held.slots.locked()

    async def batch() -> None:
        held.finished(TP, 3)

    task = asyncio.create_task(batch())
    held.inflight[TP].add(task)
    assert held.tasks() == [task]
    await task
    assert held.tasks([TP]) == [] and not held.slots.locked()


def test_a_record_holding_its_partition_is_listed_as_stuck() -> None:
    held = Partitions(1)
    held.add([TP])
    held.assigned.add(TP)
    held.offsets[TP].track(7)
    assert held.stuck_records(after_s=3600) == []
    [stuck] = held.stuck_records(after_s=0)
    assert (stuck["topic"], stuck["partition"], stuck["offset"]) == ("t", 0, 7)
