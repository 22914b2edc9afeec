"""The fan-in table: bounded waiting, evictions that leave a done marker."""

from __future__ import annotations

from weir.schemas.messages import Envelope
from weir.streams.join import JoinTable


def _input(request_id: str, source: str) -> Envelope:
    return Envelope(
        request_id=request_id,
        pipeline="p",
        step="both",
        source=source,
        kind="VALUE",
        submitted_at=0,
        created_at=0,
        request="{}",
        payload="1",
    )


def _table(max_waiting: int = 3) -> JoinTable:
    return JoinTable(
        "both", ["fast", "slow"], "cl", done_ttl_s=60, waiting_ttl_s=30, max_waiting=max_waiting
    )


def test_waiting_joins_beyond_the_cap_evict_the_oldest():
    table = _table(max_waiting=3)
    for i in range(10):
        assert table.offer(i % 2, _input(f"r{i}", "fast"))[0] == "waiting"
        assert table.waiting() <= 3
    evicted = table.take_evicted()
    assert [e.request_id for e in evicted] == [f"r{i}" for i in range(7)]
    assert all(e.missing == ("slow",) and "more than 3" in e.reason for e in evicted)
    assert table.take_evicted() == []
    # A late input of an evicted join is a duplicate, not a new wait.
    assert table.offer(0, _input("r0", "slow"))[0] == "duplicate"
    assert table.offer(1, _input("r9", "slow"))[0] == "complete"
    assert table.waiting() == 2


def test_a_join_waiting_past_its_ttl_is_evicted_then_forgotten():
    table = _table()
    table.offer(0, _input("r1", "fast"))
    assert table.expire(now=1e12) == []  # far in the future: evicted, its marker kept
    evicted = table.take_evicted()
    assert [(e.request_id, e.missing) for e in evicted] == [("r1", ("slow",))]
    assert "longer than 30s" in evicted[0].reason
    assert table.waiting() == 0
    tombstones = table.expire(now=1e12 + 1e6)
    assert [(m.key, m.value) for m in tombstones] == [(b"r1", None)]


def test_dropping_partitions_forgets_their_waiting_joins():
    table = _table(max_waiting=10)
    table.offer(0, _input("r0", "fast"))
    table.offer(1, _input("r1", "fast"))
    table.drop([0])
    assert table.waiting() == 1 and table.waiting(1) == 1
