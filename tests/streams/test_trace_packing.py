"""A batch's trace events are packed per trace-topic partition; nothing else is touched."""

from __future__ import annotations

from weir.schemas.trace_batch import is_trace_batch, unpack_trace_events
from weir.streams._trace_batch import TRACE_BATCH_BYTES, pack_traces
from weir.streams.outbox import OutMessage

TOPIC = "weir.traces"


def _event(n: int, size: int = 10) -> OutMessage:
    return OutMessage(TOPIC, f"r{n}".encode(), bytes([n % 256]) * size)


def test_events_are_packed_by_the_partition_of_their_request() -> None:
    events = [_event(n) for n in range(10)]
    other = OutMessage("weir.step", b"r1", b"envelope")
    out = pack_traces([other, *events], TOPIC, lambda key: int(key[1:]) % 3)
    assert out[0] is other
    packed = out[1:]
    assert [m.partition for m in packed] == [0, 1, 2]
    for m in packed:
        assert is_trace_batch(m.headers) and m.key is not None
        members = [e for e in events if int(e.key[1:]) % 3 == m.partition]  # type: ignore[index]
        assert m.key == members[0].key
        assert unpack_trace_events(m.value or b"", m.headers) == [e.value for e in members]


def test_large_batches_are_cut_and_lone_events_stay_as_they_were() -> None:
    size = TRACE_BATCH_BYTES // 3
    events = [_event(n, size) for n in range(7)]
    out = pack_traces(events, TOPIC, lambda key: 0)
    assert all(len(m.value or b"") <= TRACE_BATCH_BYTES for m in out)
    assert [len(unpack_trace_events(m.value or b"", m.headers)) for m in out] == [2, 2, 2, 1]
    assert out[-1] is events[-1]  # alone: sent as a single event, as before
    assert [v for m in out for v in unpack_trace_events(m.value or b"", m.headers)] == [
        e.value for e in events
    ]


def test_without_known_partitions_nothing_is_packed() -> None:
    events = [_event(n) for n in range(5)]
    assert pack_traces(events, TOPIC, lambda key: None) == events
    assert pack_traces(events[:1], TOPIC, lambda key: 0) == events[:1]
