"""Packing a batch's trace events into one record per trace-topic partition."""

from __future__ import annotations

from collections.abc import Callable

from weir.schemas.trace_batch import TRACE_BATCH_HEADER, TRACE_BATCH_VERSION, pack_trace_events
from weir.streams.outbox import OutMessage

__all__ = ["TRACE_BATCH_BYTES", "pack_traces"]

TRACE_BATCH_BYTES = 256_000
"""A packed record stays under this (a quarter of what a message may weigh)."""

_HEADERS = [(TRACE_BATCH_HEADER, TRACE_BATCH_VERSION)]


def pack_traces(
    messages: list[OutMessage], topic: str, partition_of: Callable[[bytes], int | None]
) -> list[OutMessage]:
    """``messages`` with the single events on ``topic`` packed (``weir.schemas.trace_batch``).

    Events are grouped by the partition their key (request id) maps to, so each
    request's events stay in its partition.  With the partitions not known yet
    (``partition_of`` gives ``None``), or one event alone, nothing changes.
    """
    traces = [m for m in messages if m.topic == topic and m.value is not None]
    if len(traces) < 2:
        return messages
    groups: dict[int, list[OutMessage]] = {}
    for m in traces:
        p = partition_of(m.key or b"")
        if p is None:
            return messages
        groups.setdefault(p, []).append(m)
    out = [m for m in messages if m.topic != topic or m.value is None]
    for p, group in groups.items():
        chunk: list[OutMessage] = []
        size = 0
        for m in group:
            value = m.value or b""
            if chunk and size + len(value) > TRACE_BATCH_BYTES:
                out.append(_packed(topic, p, chunk))
                chunk, size = [], 0
            chunk.append(m)
            size += len(value) + 5
        out.append(_packed(topic, p, chunk))
    return out


def _packed(topic: str, partition: int, chunk: list[OutMessage]) -> OutMessage:
    if len(chunk) == 1:
        return chunk[0]
    value = pack_trace_events(m.value or b"" for m in chunk)
    return OutMessage(topic, chunk[0].key, value, list(_HEADERS), partition)
