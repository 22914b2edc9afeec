"""Where the sink starts reading a partition it was assigned.

At its committed offset (or, without one, at the end ``sink_start`` names), moved
past what the store already holds: a crash between an insert and its commit
does not insert the same events again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Literal

from aiokafka import AIOKafkaConsumer, TopicPartition

from weir.topics._aiokafka import retrying

__all__ = ["start_offsets"]

log = logging.getLogger("weir.sink")


async def start_offsets(
    consumer: AIOKafkaConsumer,
    tps: Sequence[TopicPartition],
    stored: Mapping[int, int],
    *,
    sink_start: Literal["earliest", "latest"],
) -> tuple[dict[TopicPartition, int], int]:
    """The offset to start each of ``tps`` at, and how many events that skips.

    ``stored`` maps a partition number to the offset after the highest one the
    store holds from it.
    """
    ends: dict[TopicPartition, int] = await retrying(
        lambda: consumer.end_offsets(list(tps)), what="reading trace end offsets"
    )
    begins: dict[TopicPartition, int] = await retrying(
        lambda: consumer.beginning_offsets(list(tps)), what="reading trace first offsets"
    )
    starts: dict[TopicPartition, int] = {}
    skipped = 0
    for tp in tps:

        async def committed_offset(tp: TopicPartition = tp) -> int | None:
            return await consumer.committed(tp)  # type: ignore[no-any-return]

        start = await retrying(committed_offset, what=f"reading the committed offset of {tp}")
        if start is None:
            start = ends[tp] if sink_start == "latest" else begins[tp]
        held = stored.get(tp.partition)
        # Ahead of the commit and not past the end: inserted, then the commit was lost.
        # (Past the end: the topic was recreated; the store's offsets are another log's.)
        if held is not None and start < held <= ends[tp]:
            log.info("%s: store already holds offsets up to %d; skipping them", tp, held - 1)
            skipped += held - start
            start = held
        starts[tp] = start
    return starts, skipped
